"""Host work of one ``StreamingEngine.step`` does not grow with the number of streams it batches.

On a GPU every read of device values by Python stalls the device, and every op launched from
Python costs host time. A CPU run cannot see stalls, so this counts instead: aten ops per step
(a dispatch mode), ``to_host`` reads per step (``count_host_reads``), and ops that read a
tensor's value outside ``to_host`` (``item``, ``equal``, ``nonzero``, ``bool(t)``), which must
not happen at all.
"""

from __future__ import annotations

import dataclasses

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from operators.synthetic import synthetic_frame
from sam3_runtime.host_reads import count_host_reads
from sam3_runtime.model import load_model, write_random_checkpoint
from sam3_runtime.video.engine import StreamingEngine
from sam3_runtime.video.types import EngineOptions

SIZE = (160, 120)
CONCEPTS = ["red square", "disc"]
# aten ops through which Python reads a value of a tensor (each one a device sync on a GPU)
VALUE_READS = {"_local_scalar_dense", "item", "equal", "nonzero", "is_nonzero"}
MAX_READS_PER_STEP = 3  # detection scores, the plans' decisions, the rendered output


class StepOps(TorchDispatchMode):
    """Counts aten ops and records the value-reading ones."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.value_reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func.overloadpacket.__name__ in VALUE_READS:
            self.value_reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(str(write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")), device="cpu")


def _frames(sessions: int, i: int) -> dict:
    return {f"s{s}": synthetic_frame(i + s, SIZE, 10.0) for s in range(sessions)}


def _steady_step(loaded, sessions: int) -> tuple[StepOps, int, dict]:
    # random weights score every query near 0.25: lower thresholds so that objects appear
    video = dataclasses.replace(loaded.config.video, score_threshold_detection=0.2, new_det_thresh=0.25)
    engine = StreamingEngine(loaded, EngineOptions(), video)
    for s in range(sessions):
        engine.open_session(f"s{s}", CONCEPTS)
    for i in range(4):
        engine.step(_frames(sessions, i))
    with StepOps() as ops, count_host_reads() as reads:
        results = engine.step(_frames(sessions, 4))
    return ops, reads.count, results


def test_step_host_work_does_not_grow_with_sessions(loaded):
    one, reads_one, results_one = _steady_step(loaded, 1)
    eight, reads_eight, results_eight = _steady_step(loaded, 8)
    # the counts mean something only if every stream is tracking several objects
    assert all(len(r.objects) >= 2 for r in [*results_one.values(), *results_eight.values()])
    assert one.value_reads == [] and eight.value_reads == [], "read device values through host_reads.to_host"
    assert 1 <= reads_one <= MAX_READS_PER_STEP and 1 <= reads_eight <= MAX_READS_PER_STEP, (reads_one, reads_eight)
    assert eight.ops <= 1.5 * one.ops, f"8 sessions: {eight.ops} ops per step, 1 session: {one.ops}"
