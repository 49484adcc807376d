"""engine.compile: a compiled model gives the eager model's results, padding to a bucket included,
and a setup that cannot compile is refused in one line before the model is touched.

Tolerances: the aot_eager backend runs the same aten kernels as eager, so engine results must
match to 1e-4 (scores) and to a handful of boundary pixels (masks). Inductor fuses and reorders
float math (fp32 here), so backbone features and tracker logits must match to 1e-3 absolute.
Inductor compiles C++ on the CPU (about a minute on two cores for the tiny model): that test is slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_runtime.compile import (
    CompileUnsupported,
    backbone_bucket,
    compile_model,
    compile_problem,
    object_bucket,
)
from sam3_runtime.model import load_model, write_random_checkpoint
from sam3_runtime.video.engine import StreamingEngine
from sam3_runtime.video.propagation import propagate, tracker_features

INDUCTOR_ATOL = 1e-3
SCORE_ATOL = 1e-4
MASK_PIXELS_OFF = 8  # boundary pixels of one mask that may flip at the 0 logit threshold


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("compile") / "tiny")


def _load(checkpoint):
    return load_model(str(checkpoint), device="cpu", dtype="float32")


def test_buckets_are_few_and_cover_every_size():
    assert [backbone_bucket(b) for b in (1, 2, 3, 5, 8, 9, 16, 17, 40)] == [1, 2, 4, 8, 8, 16, 16, 32, 48]
    assert [object_bucket(n) for n in (0, 1, 2, 3, 5, 64, 65)] == [0, 1, 2, 4, 8, 64, 128]


def test_a_setup_that_cannot_compile_is_refused_before_the_model_changes(checkpoint, tmp_path):
    loaded = _load(checkpoint)
    no_compiler = {"PATH": str(tmp_path)}  # an empty directory: no g++, c++ or clang++ on it
    problem = compile_problem("cpu", "inductor", env=no_compiler)
    assert "needs a C++ compiler" in problem and "set engine.compile: false" in problem
    with pytest.raises(CompileUnsupported, match="needs a C\\+\\+ compiler"):
        compile_model(loaded.model, "cpu", env=no_compiler)
    tracker = loaded.model.tracker_model
    assert "decode_masks" not in vars(tracker) and "finish" not in vars(tracker.memory_attention)
    assert all(block._compiled_call_impl is None for block in loaded.model.detector_model.vision_encoder.backbone.layers)
    assert "unknown torch.compile backend 'fastest'" in compile_problem("cpu", "fastest")
    assert "supports cpu and cuda" in compile_problem("meta")
    assert compile_problem("cpu", "aot_eager", env=no_compiler) is None  # no C++ needed without inductor


def _frames(count: int, streams: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{f"s{i}": rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for i in range(streams)} for _ in range(count)]


def _run(engine: StreamingEngine, steps: list[dict[str, np.ndarray]]):
    for sid in steps[0]:
        engine.open_session(sid, ["red square", "green disc"], detection_threshold=0.05)
    return [engine.step(frames) for frames in steps], {sid: engine.export_session(sid) for sid in steps[0]}


def _assert_same_state(got, want, where: str = "session") -> None:
    """Two exported sessions agree: the masklet tables and every memory (tracked masks and object
    pointers end up there, also for objects a random model shows as occluded)."""
    if isinstance(want, torch.Tensor):
        tol = {"atol": 1e-2, "rtol": 1.6e-2} if want.dtype == torch.bfloat16 else {"atol": 1e-4, "rtol": 1e-4}
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same_state(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.slow
def test_compiled_engine_steps_match_eager_with_padded_batches(checkpoint):
    """3 streams (backbone batch padded to 4) with 8 to 27 tracked objects (padded to powers of two)."""
    steps = _frames(4, streams=3)
    eager, eager_state = _run(StreamingEngine(_load(checkpoint)), steps)
    loaded = _load(checkpoint)
    parts = compile_model(loaded.model, "cpu", backend="aot_eager")
    assert parts.backbone_blocks == len(loaded.model.detector_model.vision_encoder.backbone.layers)
    compiled, compiled_state = _run(StreamingEngine(loaded), steps)
    _assert_same_state(compiled_state, eager_state)
    assert sum(len(state["concept_rows"]) for state in eager_state.values()) > 8, "the check needs tracked objects"
    for step_eager, step_compiled in zip(eager, compiled, strict=True):
        for sid, want in step_eager.items():
            got = step_compiled[sid]
            assert [o.track_id for o in got.objects] == [o.track_id for o in want.objects], sid
            assert got.retracted_ids == want.retracted_ids
            for a, b in zip(got.objects, want.objects, strict=True):
                assert (a.concept, a.tentative) == (b.concept, b.tentative)
                assert abs(a.score - b.score) <= SCORE_ATOL and abs(a.tracker_score - b.tracker_score) <= SCORE_ATOL
                assert np.count_nonzero(a.mask != b.mask) <= MASK_PIXELS_OFF


def test_new_object_counts_stop_compiling_once_sizes_are_dynamic(checkpoint):
    """13 object counts give 5 buckets, and dynamo makes the object dimension dynamic after its
    first change instead of compiling each bucket (the 'eager' backend: tracing only)."""
    loaded = _load(checkpoint)
    compile_model(loaded.model, "cpu", backend="eager")
    tracker = loaded.model.tracker_model
    h, w = tracker.prompt_encoder.image_embedding_size
    features = torch.randn(16, tracker.hidden_dim, h, w)
    high_res = (torch.randn(1, tracker.hidden_dim // 8, 4 * h, 4 * w), torch.randn(1, tracker.hidden_dim // 4, 2 * h, 2 * w))
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for n in range(1, 14):
            out = tracker.decode_masks(features[:n], high_res, multimask_output=True)
            assert out.low_res_masks.shape[0] == out.object_pointer.shape[0] == n
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    assert 0 < compiled <= 3, compiled


@pytest.mark.slow
def test_inductor_backbone_and_tracker_step_match_eager(checkpoint):
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 112, 112)  # batch 3 runs padded to 4
    eager, compiled = _load(checkpoint), _load(checkpoint)
    compile_model(compiled.model, "cpu", backend="inductor")
    with torch.inference_mode():
        outs = []
        for loaded in (eager, compiled):
            vision = loaded.model.detector_model.encode_image(pixels)
            feats = tracker_features(loaded.model, vision.backbone_features)
            frame_index = torch.tensor([0, 1, 2, 2, 0])  # 5 objects: padded to 8
            tracked = propagate(loaded.model, feats, frame_index, _bank(loaded, frame_index.numel()))
            outs.append((vision.backbone_features, tracked))
    (want_feats, want), (got_feats, got) = outs
    assert got_feats.shape == want_feats.shape == (3, *want_feats.shape[1:])
    torch.testing.assert_close(got_feats, want_feats, atol=INDUCTOR_ATOL, rtol=0)
    assert got.low_res_masks.shape[0] == 5
    for name in ("low_res_masks", "object_score_logits", "object_pointer", "iou_scores"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=INDUCTOR_ATOL, rtol=0, msg=name)


def _bank(loaded, objects: int):
    """A memory bank of ``objects`` objects with random spatial memories and pointers (2 frames, 3 pointers)."""
    from sam3_runtime.modeling.tracker.tracker_model import MemoryBank

    tracker = loaded.model.tracker_model
    h, w = tracker.prompt_encoder.image_embedding_size
    g = torch.Generator().manual_seed(1)
    return MemoryBank(
        spatial=torch.randn(objects, 2, tracker.mem_dim, h, w, generator=g),
        spatial_offsets=torch.tensor([[0, 1]] * objects),
        pointers=torch.randn(objects, 3, tracker.hidden_dim, generator=g),
        pointer_offsets=torch.tensor([[1, 2, 3]] * objects),
    )
