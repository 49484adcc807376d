"""EngineLink on real Ray and a real (tiny) engine: numbered frames in order, and recovery after the engine dies."""

from __future__ import annotations

import pytest

from operators.synthetic import write_synthetic_video
from operators.video_source import open_video
from sam3_runtime.model import write_random_checkpoint

CONCEPTS = ["red square", "green disc"]


@pytest.fixture(scope="module")
def link_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_link")
    video = write_synthetic_video(root / "v.mp4", frames=5, size=(96, 64), fps=10)
    return write_random_checkpoint(root / "tiny"), list(open_video(video))


def _engine(ray, checkpoint, max_wait_ms: float = 5.0, max_restarts: int = -1):
    from pipeline.engine_actor import EngineActor, EngineSettings

    settings = EngineSettings(str(checkpoint), device="cpu", max_wait_ms=max_wait_ms)
    return EngineActor.options(max_restarts=max_restarts).remote(settings)


def test_frames_come_back_in_order_and_only_the_first_result_of_a_session_is_new(ray_session, link_inputs):
    from pipeline.engine_link import EngineLink

    ray = ray_session
    checkpoint, frames = link_inputs
    engine = _engine(ray, checkpoint)
    try:
        link = EngineLink(engine, "cam", CONCEPTS, 0.1, window=3)
        link.open()
        got = []
        for frame in frames:
            link.send(frame)
            assert link.in_flight <= 3
            if link.full:
                got.append(link.collect())
        while link.in_flight:
            got.append(link.collect())
        assert [c.frame.index for c in got] == [f.index for f in frames]
        assert [c.result.frame_index for c in got] == list(range(len(frames)))  # the engine saw them in order
        assert [c.new_session for c in got] == [True] + [False] * (len(frames) - 1)
        with pytest.raises(RuntimeError, match="no frame in flight"):
            link.collect()
        link.close()
    finally:
        ray.kill(engine)


def test_after_the_engine_dies_the_frames_in_flight_go_to_a_new_session(ray_session, link_inputs):
    from pipeline.engine_link import EngineLink

    ray = ray_session
    checkpoint, frames = link_inputs
    # a long batching wait keeps the frames in flight until the kill lands; Ray restarts the engine (max_restarts=-1)
    engine = _engine(ray, checkpoint, max_wait_ms=1500.0)
    restarts = []
    try:
        link = EngineLink(engine, "cam", CONCEPTS, 0.1, window=4, on_engine_restart=lambda: restarts.append(1))
        link.open()
        link.send(frames[0])
        first = link.collect()
        for frame in frames[1:4]:
            link.send(frame)
        ray.kill(engine, no_restart=False)
        got = [link.collect() for _ in range(3)]
        assert restarts == [1]
        assert [c.frame.index for c in got] == [1, 2, 3]  # nothing in flight was lost
        assert [c.new_session for c in got] == [True, False, False]
        assert [c.result.frame_index for c in got] == [0, 1, 2]  # re-sent from sequence number 0 of the new session
        assert first.new_session and first.result.frame_index == 0
        link.close()
    finally:
        ray.kill(engine)


def test_an_engine_that_does_not_come_back_fails_the_link(ray_session, link_inputs):
    from pipeline.engine_link import EngineLink

    ray = ray_session
    checkpoint, frames = link_inputs
    engine = _engine(ray, checkpoint, max_restarts=0)
    link = EngineLink(engine, "cam", CONCEPTS, 0.1, window=2, wait_s=1.0)
    link.open()
    ray.kill(engine, no_restart=True)
    link.send(frames[0])
    with pytest.raises(RuntimeError, match="did not come back within 1 s"):
        link.collect()
    link.close()  # a gone engine has nothing to close



def test_opening_on_a_lost_engine_waits_for_it_like_every_other_call(ray_session, link_inputs):
    from pipeline.engine_link import EngineLink

    ray = ray_session
    checkpoint, _ = link_inputs
    engine = _engine(ray, checkpoint, max_restarts=0)
    ray.get(engine.ready.remote())
    ray.kill(engine, no_restart=True)  # a file's pass starts just as its engine's node goes away
    link = EngineLink(engine, "cam", CONCEPTS, 0.1, window=2, wait_s=1.0)
    with pytest.raises(RuntimeError, match="did not come back within 1 s"):
        link.open()
