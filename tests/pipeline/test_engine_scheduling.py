"""When the engine actor steps: as soon as every open session has a frame, or ``max_batch`` streams
have one, or ``max_wait_ms`` passed. A real EngineActor on real Ray with the tiny random checkpoint.

The "patient" engine waits ten hang guards for more streams, so a step that waited for its
deadline shows up as a hang (``ray.get`` raises ``GetTimeoutError``), never as a slow test.
"""

from __future__ import annotations

import pytest

from operators.synthetic import write_synthetic_video
from operators.video_source import open_video
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S

CONCEPTS = ["red square", "green disc"]
FOREVER_MS = 10 * HANG_GUARD_S * 1000.0  # a step that waits for its deadline never finishes within the guard
SHORT_MS = 200.0
PEEK_S = 1.0  # how long a test looks for a step that should not have happened yet


@pytest.fixture(scope="module")
def frames_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_scheduling")
    video = write_synthetic_video(root / "v.mp4", frames=3, size=(96, 64), fps=10)
    return write_random_checkpoint(root / "tiny"), [f.image for f in open_video(video)]


def _engine(ray, checkpoint, max_wait_ms: float, max_batch: int):
    from pipeline.engine_actor import EngineActor, EngineSettings
    from sam3_runtime.video.types import EngineOptions

    settings = EngineSettings(str(checkpoint), device="cpu", max_batch=max_batch, max_wait_ms=max_wait_ms,
                              options=EngineOptions(hotstart_mode="off"))
    engine = EngineActor.remote(settings)
    ray.get(engine.ready.remote(), timeout=HANG_GUARD_S)
    return engine


@pytest.fixture(scope="module")
def patient(ray_session, frames_and_checkpoint):
    """An engine that would wait (practically) forever for a second stream; two streams per step at most."""
    engine = _engine(ray_session, frames_and_checkpoint[0], FOREVER_MS, max_batch=2)
    yield engine
    ray_session.kill(engine)


@pytest.fixture(scope="module")
def impatient(ray_session, frames_and_checkpoint):
    engine = _engine(ray_session, frames_and_checkpoint[0], SHORT_MS, max_batch=8)
    yield engine
    ray_session.kill(engine)


class Sessions:
    """Opens sessions on an engine and closes them again, so the module's engines start each test empty."""

    def __init__(self, ray, engine):
        self.ray, self.engine, self.open_ids = ray, engine, []

    def open(self, *stream_ids: str) -> None:
        for sid in stream_ids:
            self.ray.get(self.engine.open.remote(sid, CONCEPTS, 0.1), timeout=HANG_GUARD_S)
            self.open_ids.append(sid)

    def close(self, sid: str) -> None:
        self.ray.get(self.engine.close.remote(sid), timeout=HANG_GUARD_S)
        self.open_ids.remove(sid)

    def close_all(self) -> None:
        for sid in list(self.open_ids):
            self.close(sid)


@pytest.fixture
def sessions_on(ray_session):
    made = []

    def make(engine) -> Sessions:
        made.append(Sessions(ray_session, engine))
        return made[-1]

    yield make
    for sessions in made:
        sessions.close_all()


def _batches(ray, engine) -> list[int]:
    """Steps so far by batch size: [size 1, size 2, size 3-4, ...] (EngineStats' histogram)."""
    return list(ray.get(engine.stats.remote(), timeout=HANG_GUARD_S).batch_size_buckets)


def _new_batches(before: list[int], after: list[int]) -> dict[str, int]:
    from pipeline.engine_actor import BATCH_SIZE_BUCKETS

    names = [f"<={b}" for b in BATCH_SIZE_BUCKETS] + ["more"]
    return {names[i]: a - b for i, (a, b) in enumerate(zip(after, before, strict=True)) if a != b}


def test_one_open_session_steps_each_frame_without_waiting(ray_session, patient, sessions_on, frames_and_checkpoint):
    ray, frames = ray_session, frames_and_checkpoint[1]
    sessions_on(patient).open("solo")
    before = _batches(ray, patient)
    # one frame at a time: each must be answered before the next is sent, so none can wait for company
    got = [ray.get(patient.process.remote("solo", i, f), timeout=HANG_GUARD_S) for i, f in enumerate(frames)]
    assert [r.frame_index for r in got] == list(range(len(frames)))
    assert _new_batches(before, _batches(ray, patient)) == {"<=1": len(frames)}


def test_a_step_waits_until_every_open_session_has_a_frame(ray_session, patient, sessions_on, frames_and_checkpoint):
    ray, frames = ray_session, frames_and_checkpoint[1]
    sessions_on(patient).open("a", "b")
    before = _batches(ray, patient)
    first_a = patient.process.remote("a", 0, frames[0])
    assert ray.wait([first_a], timeout=PEEK_S)[0] == [], "stepped without waiting for the other open session"
    first_b = patient.process.remote("b", 0, frames[0])
    assert [r.frame_index for r in ray.get([first_a, first_b], timeout=HANG_GUARD_S)] == [0, 0]
    # a burst of two frames per stream: one frame per stream per step, in sequence order
    refs = [patient.process.remote(sid, seq, frames[seq]) for sid in ("a", "b") for seq in (1, 2)]
    assert [r.frame_index for r in ray.get(refs, timeout=HANG_GUARD_S)] == [1, 2, 1, 2]
    assert _new_batches(before, _batches(ray, patient)) == {"<=2": 3}


def test_max_batch_streams_step_without_waiting_for_the_other_open_sessions(
        ray_session, patient, sessions_on, frames_and_checkpoint):
    ray, frames = ray_session, frames_and_checkpoint[1]
    sessions_on(patient).open("x", "y", "idle")  # three open sessions, max_batch 2
    before = _batches(ray, patient)
    refs = [patient.process.remote(sid, 0, frames[0]) for sid in ("x", "y")]
    ray.get(refs, timeout=HANG_GUARD_S)
    assert _new_batches(before, _batches(ray, patient)) == {"<=2": 1}


def test_closing_the_session_a_step_waits_for_releases_it(ray_session, patient, sessions_on, frames_and_checkpoint):
    ray, frames = ray_session, frames_and_checkpoint[1]
    sessions = sessions_on(patient)
    sessions.open("stays", "leaves")
    waiting = patient.process.remote("stays", 0, frames[0])
    assert ray.wait([waiting], timeout=PEEK_S)[0] == [], "stepped without waiting for the other open session"
    sessions.close("leaves")
    assert ray.get(waiting, timeout=HANG_GUARD_S).frame_index == 0
    # and the closed session is no longer waited for on the next frame either
    assert ray.get(patient.process.remote("stays", 1, frames[1]), timeout=HANG_GUARD_S).frame_index == 1


def test_an_idle_open_session_delays_the_others_at_most_max_wait(
        ray_session, impatient, sessions_on, frames_and_checkpoint):
    ray, frames = ray_session, frames_and_checkpoint[1]
    sessions_on(impatient).open("busy", "opened-but-idle")
    before = _batches(ray, impatient)
    got = [ray.get(impatient.process.remote("busy", i, f), timeout=HANG_GUARD_S) for i, f in enumerate(frames)]
    assert [r.frame_index for r in got] == list(range(len(frames)))
    assert _new_batches(before, _batches(ray, impatient)) == {"<=1": len(frames)}


def test_a_session_missing_its_next_frame_delays_the_others_at_most_max_wait(
        ray_session, impatient, sessions_on, frames_and_checkpoint):
    ray, frames = ray_session, frames_and_checkpoint[1]
    sessions_on(impatient).open("gap", "other")
    later = impatient.process.remote("gap", 1, frames[1])  # frame 0 of "gap" has not arrived
    got = [ray.get(impatient.process.remote("other", i, f), timeout=HANG_GUARD_S) for i, f in enumerate(frames)]
    assert [r.frame_index for r in got] == list(range(len(frames)))
    assert ray.wait([later], timeout=0)[0] == [], "a frame was stepped before its predecessor"
    first = impatient.process.remote("gap", 0, frames[0])
    assert [r.frame_index for r in ray.get([first, later], timeout=HANG_GUARD_S)] == [0, 1]
