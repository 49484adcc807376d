"""ObjectMemory: which memories a tracked frame reads, object bookkeeping, moving a stream, bounded size."""

from __future__ import annotations

import dataclasses
import gc
import io
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.modeling.tracker import TrackerModel
from sam3_runtime.video.memory import ObjectMemory, gather_banks
from sam3_runtime.video.propagation import TrackerFrameFeatures, commit_memories, propagate
from tests.parity.hf_reference import hf_video_config

CM, C, H, W = 64, 128, 2, 2


def small_memory(capacity: int = 4, **kw) -> ObjectMemory:
    kw.setdefault("memory_dtype", torch.float32)
    return ObjectMemory(mem_dim=CM, hidden_dim=C, feat_size=(H, W), capacity=capacity, **kw)


def write_frames(memory: ObjectMemory, rows: list[int], frame: int, cond: list[bool]) -> None:
    """Memories whose every value is the frame index, so that a bank tells where it came from."""
    n = len(rows)
    memory.write(rows, frame, torch.full((n, CM, H, W), float(frame)), torch.full((n, C), float(frame)), cond)


def read_bank(memory: ObjectMemory, rows: list[int], frame: int) -> list[tuple[set, set]]:
    """Per row: {(temporal offset, source frame)} of its valid spatial memories and of its pointers."""
    bank = memory.bank(rows, frame)
    out = []
    for i in range(len(rows)):
        spatial, pointers = set(), set()
        if bank.spatial is not None:
            for s in range(bank.spatial.shape[1]):
                if bank.spatial_valid is None or bank.spatial_valid[i, s]:
                    spatial.add((int(bank.spatial_offsets[i, s]), int(bank.spatial[i, s, 0, 0, 0])))
        if bank.pointers is not None:
            for p in range(bank.pointers.shape[1]):
                if bank.pointer_valid is None or bank.pointer_valid[i, p]:
                    pointers.add((int(bank.pointer_offsets[i, p]), int(bank.pointers[i, p, 0])))
        out.append((spatial, pointers))
    return out


# -- selection rules vs transformers' own selection code ------------------------------------


@pytest.fixture(scope="module")
def hf_tracker():
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoModel

    config = hf_video_config(Sam3Config.tiny()).tracker_config
    return Sam3TrackerVideoModel(config, remove_vision_encoder=True).eval()


def hf_selection(hf, history: dict[str, dict[int, dict]], frame: int) -> tuple[set, set, set]:
    """What transformers' streaming tracker reads at ``frame``: spatial, pointers, and the official pointer rule."""
    session = SimpleNamespace(output_dict_per_obj={0: history})
    spatial = {(off, out["frame"]) for off, out in hf._gather_memory_frame_outputs(session, 0, frame) if out is not None}
    offsets, ptrs, _ = hf._get_object_pointers(session, 0, frame, None, torch.device("cpu"), streaming=True)
    pointers = {(off, int(p[0, 0])) for off, p in zip(offsets, ptrs, strict=True)}
    # the official SAM 2 / SAM 3 rule: pointers of the *selected* conditioning frames, and
    # unselected conditioning frames count as ordinary ones among the last 15 frames
    selected, unselected = hf._select_closest_cond_frames(frame, history["cond_frame_outputs"], hf.config.max_cond_frame_num)
    official = {(frame - f, f) for f in selected if f <= frame}
    for d in range(1, hf.config.max_object_pointers_in_encoder):
        f = frame - d
        if f in history["non_cond_frame_outputs"] or f in unselected:
            official.add((d, f))
    return spatial, pointers, official


@pytest.mark.parametrize("seed", range(6))
def test_selection_matches_transformers(hf_tracker, seed):
    rng = random.Random(seed)
    p_cond = [0.05, 0.3, 0.6][seed % 3]  # sparse re-conditioning ... conditioning frames in a row
    num_objects, num_frames = 3, 60
    memory = small_memory(capacity=2)
    rows = memory.add_objects(num_objects)
    histories = [{"cond_frame_outputs": {}, "non_cond_frame_outputs": {}} for _ in rows]
    start = [0, 3, 10]  # objects added later start with a conditioning frame of their own
    demoted_pointer_differs = 0
    for t in range(num_frames):
        active = [i for i in range(num_objects) if t >= start[i] and (t == start[i] or rng.random() > 0.1)]
        for i in active:
            if t == start[i]:
                continue
            spatial, pointers, official = hf_selection(hf_tracker, histories[i], t)
            got_spatial, got_pointers = read_bank(memory, [rows[i]], t)[0]
            assert got_spatial == spatial, (seed, t, i)
            assert got_pointers == official, (seed, t, i)
            if len(histories[i]["cond_frame_outputs"]) <= hf_tracker.config.max_cond_frame_num:
                assert got_pointers == pointers, (seed, t, i)
            else:  # transformers keeps every conditioning frame's pointer forever
                old = {(t - f, f) for f in histories[i]["cond_frame_outputs"] if t - f >= 16}
                assert pointers - got_pointers <= old and got_pointers <= pointers
                demoted_pointer_differs += bool(pointers - got_pointers)
        cond = [t == start[i] or rng.random() < p_cond for i in active]
        write_frames(memory, [rows[i] for i in active], t, cond)
        for i, c in zip(active, cond, strict=True):
            key = "cond_frame_outputs" if c else "non_cond_frame_outputs"
            histories[i][key][t] = {"frame": t, "object_pointer": torch.full((1, C), float(t))}
    if p_cond >= 0.3:
        assert demoted_pointer_differs > 0  # the > 4 conditioning frames case was reached


def test_ring_offsets_after_wrap():
    memory = small_memory()
    (row,) = memory.add_objects(1)
    write_frames(memory, [row], 0, [True])
    for t in range(1, 40):
        write_frames(memory, [row], t, [False])
    spatial, pointers = read_bank(memory, [row], 40)[0]
    assert spatial == {(0, 0)} | {(k, 40 - k) for k in range(1, 7)}
    assert pointers == {(40, 0)} | {(k, 40 - k) for k in range(1, 16)}
    # five conditioning frames: the oldest is pushed out of the four kept (and is too old to be recent)
    for t in range(41, 48):
        write_frames(memory, [row], t, [t % 2 == 1])
    spatial, pointers = read_bank(memory, [row], 48)[0]
    assert spatial == {(0, 41), (0, 43), (0, 45), (0, 47), (6, 42), (4, 44), (2, 46)}
    assert pointers == {(7, 41), (5, 43), (3, 45), (1, 47), (6, 42), (4, 44), (2, 46)} | {(48 - f, f) for f in range(33, 40)}
    # a conditioning frame pushed out while recent still counts as a recent frame
    for t in (48, 49, 50, 51):
        write_frames(memory, [row], t, [True])
    spatial, pointers = read_bank(memory, [row], 52)[0]
    assert spatial == {(0, 48), (0, 49), (0, 50), (0, 51), (5, 47), (6, 46)}
    assert {(9, 43), (7, 45), (5, 47)} <= pointers and (11, 41) in pointers


def test_rewriting_a_frame_replaces_it():
    memory = small_memory()
    (row,) = memory.add_objects(1)
    write_frames(memory, [row], 0, [True])
    write_frames(memory, [row], 1, [False])
    write_frames(memory, [row], 1, [True])  # re-conditioned on the same frame
    spatial, _ = read_bank(memory, [row], 2)[0]
    assert spatial == {(0, 0), (0, 1)}
    with pytest.raises(ValueError, match="back in time"):
        write_frames(memory, [row], 0, [False])


# -- objects ----------------------------------------------------------------------------------


def test_add_remove_grow_and_reuse():
    memory = small_memory(capacity=2)
    assert memory.add_objects(2) == [0, 1]
    write_frames(memory, [0, 1], 0, [True, True])
    write_frames(memory, [0, 1], 1, [False, False])
    before = memory.bank([0, 1], 2)
    nbytes = memory.nbytes
    assert memory.add_objects(1) == [2] and memory.capacity == 4 and memory.nbytes == 2 * nbytes
    after = memory.bank([0, 1], 2)
    assert torch.equal(before.spatial, after.spatial) and torch.equal(before.pointers, after.pointers)
    memory.remove_objects([0])
    assert memory.live_rows == [1, 2] and memory.num_objects == 2
    assert memory.add_objects(1) == [0]  # the lowest free row is reused, empty
    assert read_bank(memory, [0, 1], 2) == [(set(), set()), read_bank(memory, [1], 2)[0]]
    with pytest.raises(KeyError):
        memory.remove_objects([3])
    with pytest.raises(KeyError):
        write_frames(memory, [3], 2, [False])
    memory.reset()
    assert memory.num_objects == 0 and memory.capacity == 4 and memory.add_objects(1) == [0]


def test_gather_banks_pads_streams():
    a, b = small_memory(), small_memory()
    ra, rb = a.add_objects(1), b.add_objects(2)
    write_frames(a, ra, 0, [True])
    write_frames(b, rb, 5, [True, True])
    for t in range(1, 4):
        write_frames(a, ra, t, [False])
    write_frames(b, rb, 6, [True, False])  # row 0 re-conditioned: two conditioning frames
    bank = gather_banks([(a, ra, 4), (b, rb, 7)])
    assert bank.spatial.shape[:2] == (3, 5)  # 2 conditioning + 3 recent slots in use
    assert read_bank(a, ra, 4) + read_bank(b, rb, 7) == [
        ({(0, 0), (1, 3), (2, 2), (3, 1)}, {(4, 0), (1, 3), (2, 2), (3, 1)}),
        ({(0, 5), (0, 6)}, {(2, 5), (1, 6)}),
        ({(0, 5), (1, 6)}, {(2, 5), (1, 6)}),
    ]
    assert bank.spatial_valid.sum(1).tolist() == [4, 2, 2]
    with pytest.raises(ValueError, match="geometry"):
        gather_banks([(a, ra, 4), (small_memory(memory_dtype=torch.bfloat16), [], 1)])


# -- a stream on the tracker -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker():
    """The tiny tracker shrunk further (4 x 4 tokens, one attention layer): thousands of steps in seconds."""
    cfg = Sam3Config.tiny().tracker
    cfg = dataclasses.replace(
        cfg,
        image_size=56,
        prompt_encoder_config=dataclasses.replace(cfg.prompt_encoder_config, image_size=56),
        memory_attention_num_layers=1,
        memory_attention_rope_feat_sizes=(4, 4),
    )
    torch.manual_seed(0)
    model = TrackerModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.02 if "bias" in name else 0.1
            p.copy_((1.0 if name.endswith("weight") and "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=g))
    return model


def random_frame(model: TrackerModel, seed: int) -> TrackerFrameFeatures:
    g = torch.Generator().manual_seed(seed)
    c = model.hidden_dim
    h, w = model.prompt_encoder.image_embedding_size
    return TrackerFrameFeatures(
        features=torch.randn(1, c, h, w, generator=g),
        position=torch.randn(1, c, h, w, generator=g),
        high_res=(torch.randn(1, c // 8, 4 * h, 4 * w, generator=g), torch.randn(1, c // 4, 2 * h, 2 * w, generator=g)),
    )


def step(model, memory, rows, frame, feats, cond=False):
    out = propagate(model, feats, [0] * len(rows), [(memory, rows, frame)])
    commit_memories(model, feats, [0] * len(rows), out.low_res_masks, out.object_score_logits, out.object_pointer,
                    [(memory, rows, frame)], is_conditioning=cond)
    return out


@torch.inference_mode()
def test_state_dict_round_trip_gives_identical_propagation(tracker):
    memory = ObjectMemory.for_model(tracker, capacity=2)
    rows = memory.add_objects(3)
    memory.remove_objects([rows[1]])  # a hole in the rows must survive the move
    rows = [rows[0], rows[2]]
    for t in range(12):
        step(tracker, memory, rows, t, random_frame(tracker, t), cond=t in (0, 9))
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    moved = ObjectMemory.from_state_dict(torch.load(buffer, weights_only=True))
    assert moved.live_rows == memory.live_rows and moved.nbytes == memory.nbytes
    assert moved.add_objects(1) == [1] and memory.add_objects(1) == [1]
    for t in range(12, 15):
        a = step(tracker, memory, rows, t, random_frame(tracker, t))
        b = step(tracker, moved, rows, t, random_frame(tracker, t))
        assert torch.equal(a.low_res_masks, b.low_res_masks)
        assert torch.equal(a.object_pointer, b.object_pointer)


@torch.inference_mode()
def test_object_without_memory_in_a_batch_and_bf16(tracker):
    model16 = TrackerModel(tracker.cfg).eval()
    model16.load_state_dict(tracker.state_dict())
    model16 = model16.to(torch.bfloat16)
    for model, dtype in ((tracker, torch.float32), (model16, torch.bfloat16)):
        memory = ObjectMemory.for_model(model, capacity=4)
        assert memory.pointer_dtype == dtype and memory.memory_dtype == torch.bfloat16
        rows = memory.add_objects(2)
        for t in range(9):
            feats = random_frame(model, t)
            feats = TrackerFrameFeatures(feats.features.to(dtype), feats.position.to(dtype),
                                         tuple(x.to(dtype) for x in feats.high_res))
            out = step(model, memory, rows, t, feats, cond=t == 0)
            assert out.low_res_masks.dtype == dtype and torch.isfinite(out.low_res_masks).all()
        (fresh,) = memory.add_objects(1)  # no memory yet: the "no memory" conditioning
        both = propagate(model, feats, [0, 0, 0], [(memory, rows + [fresh], 9)])
        alone = propagate(model, feats, [0], [(memory, [fresh], 9)])
        assert memory.bank([fresh], 9).spatial is None
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(both.low_res_masks[2:].float(), alone.low_res_masks.float(), rtol=tol, atol=tol)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.slow
@torch.inference_mode()
def test_memory_is_bounded_over_2000_frames(tracker):
    """One stream, eight objects, re-conditioned every 16th frame: nothing grows with frames."""
    memory = ObjectMemory.for_model(tracker, capacity=2)
    rows = memory.add_objects(8)
    frames = [random_frame(tracker, s) for s in range(4)]
    sizes = {}
    for t in range(2000):
        step(tracker, memory, rows, t, frames[t % 4], cond=t % 16 == 0)
        if t + 1 in (200, 2000):
            gc.collect()
            sizes[t + 1] = (_rss_bytes(), memory.nbytes, _live_tensors())
    (rss_200, bytes_200, tensors_200), (rss_2000, bytes_2000, tensors_2000) = sizes[200], sizes[2000]
    assert bytes_200 == bytes_2000 == memory.nbytes
    assert tensors_200 == tensors_2000
    assert abs(rss_2000 - rss_200) < 0.05 * rss_200, (rss_200, rss_2000)
    # and well below what keeping every frame (as the reference does) would have added
    per_frame = len(rows) * (memory._spatial[0, 0].nbytes + memory._pointers[0, 0].nbytes)
    assert rss_2000 - rss_200 < 0.25 * 1800 * per_frame, (rss_200, rss_2000, per_frame)
    spatial, pointers = read_bank_frames(memory, rows, 2000)
    assert spatial == {1984, 1968, 1952, 1936} | set(range(1994, 2000))
    assert pointers == {1984, 1968, 1952, 1936} | set(range(1985, 2000))


def read_bank_frames(memory: ObjectMemory, rows: list[int], frame: int) -> tuple[set, set]:
    """Source frames of the first row's valid memories (the tracker's memories hold real features here)."""
    row = rows[0]
    s_valid, _, p_valid, _ = memory._selection(np.asarray([row]), frame)
    return set(memory._spatial_frame[row][s_valid[0]].tolist()), set(memory._pointer_frame[row][p_valid[0]].tolist())
