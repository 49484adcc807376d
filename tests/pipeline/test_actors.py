"""The pipeline actors on real Ray: engine sequencing, and how a restored stream picks up its source."""

from __future__ import annotations

import numpy as np
import pytest

from operators.synthetic import write_synthetic_video
from operators.video_source import open_video
from sam3_runtime.model import write_random_checkpoint

CONCEPTS = ["red square", "green disc"]


@pytest.fixture(scope="module")
def engine_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_actor")
    video = write_synthetic_video(root / "v.mp4", frames=4, size=(96, 64), fps=10)
    return write_random_checkpoint(root / "tiny"), [f.image for f in open_video(video)]


def _objects(result):
    return [(o.track_id, o.concept, round(o.score, 5), int(np.count_nonzero(o.mask))) for o in result.objects]


def test_frames_are_stepped_in_sequence_order(ray_session, engine_inputs):
    from pipeline.engine_actor import EngineActor, EngineSettings
    from sam3_runtime.video.types import EngineOptions

    ray = ray_session
    ckpt, frames = engine_inputs
    settings = EngineSettings(str(ckpt), device="cpu", max_batch=2, max_wait_ms=5.0,
                              options=EngineOptions(hotstart_mode="off"))
    engine = EngineActor.remote(settings)
    try:
        ray.get(engine.open.remote("in-order", CONCEPTS, 0.1))
        expected = [ray.get(engine.process.remote("in-order", i, f)) for i, f in enumerate(frames)]

        ray.get(engine.open.remote("reversed", CONCEPTS, 0.1))
        refs = {}
        for i in reversed(range(1, len(frames))):  # the last frame first: each waits for its predecessors
            refs[i] = engine.process.remote("reversed", i, frames[i])
        # a frame of another session sent after them is stepped; without frame 0 none of them may be
        ray.get(engine.process.remote("in-order", len(frames), frames[0]))
        assert ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)[0] == [], "stepped before frame 0"
        refs[0] = engine.process.remote("reversed", 0, frames[0])
        got = [ray.get(refs[i]) for i in range(len(frames))]
        # the session numbers its frames in the order it steps them: frame i was stepped i-th
        assert [r.frame_index for r in got] == list(range(len(frames)))
        assert [_objects(r) for r in got] == [_objects(r) for r in expected]

        with pytest.raises(ray.exceptions.RayTaskError, match="already sent"):
            ray.get(engine.process.remote("reversed", 1, frames[1]))
        with pytest.raises(ray.exceptions.RayTaskError, match="call open"):
            ray.get(engine.process.remote("never-opened", 0, frames[0]))
    finally:
        ray.kill(engine)


def test_a_restored_stream_skips_handled_file_frames_and_numbers_live_frames_on():
    from operators.resume_point import ResumePoint
    from operators.video_source import Frame
    from pipeline.decoding import frames_after

    image = np.zeros((2, 2, 3), np.uint8)
    frames = [Frame(index=i, source_index=i, pts_s=i / 10, image=image) for i in range(6)]
    checkpoint = ResumePoint("cam", frame_index=3, pts_s=0.3, tracks={})
    assert [f.index for f in frames_after(iter(frames), checkpoint, live=False)] == [4, 5]
    # a live source restarts its numbering when it reconnects; the stream's numbering goes on
    live = list(frames_after(iter(frames[:2]), checkpoint, live=True))
    assert [f.index for f in live] == [4, 5]
    assert [f.pts_s for f in live] == pytest.approx([0.3, 0.4])
