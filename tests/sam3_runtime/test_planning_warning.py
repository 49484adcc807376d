"""A crowded scene (more detections than ``max_num_objects``) is warned about once per session and then at
most once a minute with a count, not on every frame. Real ``plan_frame`` over synthetic boxes."""

from __future__ import annotations

import logging

import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.memory import ObjectMemory
from sam3_runtime.video.planning import plan_frame
from sam3_runtime.video.session import DROPPED_WARNING_INTERVAL_S, TrackerSession

H = W = 32
BOXES = [(2, 2, 10, 10), (14, 2, 22, 10), (2, 14, 10, 22), (14, 14, 22, 22)]
CROWDED = VideoConfig(max_num_objects=2)  # four boxes on every frame: two are always dropped


def _masks(boxes) -> torch.Tensor:
    masks = torch.full((len(boxes), H, W), -8.0)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 8.0
    return masks


class Scene:
    """A session seeing the same four boxes on every frame; its tracks follow the boxes they started on."""

    def __init__(self, stream_id: str, cfg: VideoConfig):
        memory = ObjectMemory(mem_dim=8, hidden_dim=16, feat_size=(2, 2), capacity=2, memory_dtype=torch.float32)
        self.session = TrackerSession(stream_id=stream_id, memory=memory)
        self.concept = self.session.add_concept("car")
        self.cfg = cfg
        self.box_of: dict[int, int] = {}  # track id -> box index

    def frame(self, now: float) -> int:
        """Plan and apply one frame at monotonic time ``now``; returns the detections dropped."""
        session = self.session
        tracked = [self.box_of[i] for i in session.table.obj_ids.tolist()]
        plan, table = plan_frame(
            session.table, session.frame_index, _masks(BOXES), torch.tensor([0.95, 0.9, 0.85, 0.8]),
            torch.full((len(BOXES),), self.concept, dtype=torch.long),
            _masks([BOXES[b] for b in tracked]), torch.full((len(tracked),), 3.0), self.cfg, hotstart_mode="off",
        )
        self.box_of.update(zip(plan.new_obj_ids.tolist(), plan.new_det_indices.tolist(), strict=True))
        session.apply_plan(plan, table, now=now)
        session.advance_frame()
        return plan.num_dropped


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "max_num_objects" in r.getMessage()]


def test_a_crowded_scene_warns_once_then_at_most_once_a_minute_with_a_count(caplog):
    caplog.set_level(logging.DEBUG, logger="sam3_runtime.video")
    scene = Scene("crowded", CROWDED)
    assert [scene.frame(now=100.0 + s) for s in range(5)] == [2] * 5  # the cap really drops on every frame
    assert _warnings(caplog) == [
        "stream 'crowded': max_num_objects reached, 2 new detections dropped over 1 frame(s); raise "
        "engine.max_objects_per_stream in the job file to track them (warned at most once a minute)"
    ]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "max_num_objects=2 reached" in r.getMessage()]
    assert len(debug) == 5, "every frame's drop is still logged at DEBUG"

    caplog.clear()
    scene.frame(now=100.0 + DROPPED_WARNING_INTERVAL_S)  # a minute after the first warning: the count since
    [second] = _warnings(caplog)
    assert "10 new detections dropped over 5 frame(s)" in second
    caplog.clear()
    scene.frame(now=101.0 + DROPPED_WARNING_INTERVAL_S)
    assert _warnings(caplog) == []
    assert scene.session.dropped.total == 14


def test_each_session_warns_on_its_own_and_an_uncrowded_one_never(caplog):
    caplog.set_level(logging.DEBUG, logger="sam3_runtime.video")
    first, second, roomy = Scene("first", CROWDED), Scene("second", CROWDED), Scene("roomy", VideoConfig())
    for now in (0.0, 1.0):
        first.frame(now)
        second.frame(now)
        assert roomy.frame(now) == 0
    assert [m.split(":")[0] for m in _warnings(caplog)] == ["stream 'first'", "stream 'second'"]
    assert roomy.session.dropped.total == 0
