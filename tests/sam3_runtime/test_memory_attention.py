"""Memory attention without attention masks: objects grouped by memory layout, layer 0 once per frame.

The objects come from two streams' real ``ObjectMemory`` buffers with different histories, so
one batch mixes objects with 1..4 spatial memories, different pointer counts and no memory at
all, read from two different frames.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from sam3_runtime.config import Sam3Config
from sam3_runtime.host_reads import count_host_reads
from sam3_runtime.modeling.tracker import MemoryBank, TrackerModel
from sam3_runtime.modeling.tracker.memory_attention import axial_rope, rotate_
from sam3_runtime.video.memory import ObjectMemory, gather_banks


class SdpaSpy(TorchFunctionMode):
    """Records the attn_mask of every scaled_dot_product_attention call."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[object] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.masks.append(kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def tracker() -> TrackerModel:
    """The tiny tracker on a 4 x 4 token grid with two attention layers and lively random weights."""
    cfg = Sam3Config.tiny().tracker
    cfg = dataclasses.replace(
        cfg,
        image_size=56,
        prompt_encoder_config=dataclasses.replace(cfg.prompt_encoder_config, image_size=56),
        memory_attention_num_layers=2,
        memory_attention_rope_feat_sizes=(4, 4),
    )
    model = TrackerModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("weight") and "norm" in name else 0.0
            p.copy_(base + (0.02 if "bias" in name else 0.1) * torch.randn(p.shape, generator=g))
    return model


def write(model: TrackerModel, memory: ObjectMemory, rows: list[int], frame: int, cond: list[bool], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    h, w = memory.feat_size
    memory.write(rows, frame, torch.randn(len(rows), model.mem_dim, h, w, generator=g),
                 torch.randn(len(rows), model.hidden_dim, generator=g), cond)


@pytest.fixture(scope="module")
def batch(tracker):
    """A gathered bank of 6 objects with mixed layouts, two frames' features and each object's frame."""
    a, b = ObjectMemory.for_model(tracker, capacity=4), ObjectMemory.for_model(tracker, capacity=4)
    ra = a.add_objects(3)
    write(tracker, a, ra[:1], 0, [True], 0)
    write(tracker, a, ra[:1], 1, [False], 1)
    write(tracker, a, ra[:2], 2, [False, True], 2)
    write(tracker, a, ra[:2], 3, [False, False], 3)  # ra[2] never written: no memory at all
    rb = b.add_objects(2)
    write(tracker, b, rb, 5, [True, True], 5)
    write(tracker, b, rb, 6, [True, False], 6)
    bank = gather_banks([(a, ra, 4), (b, rb, 7)])
    g = torch.Generator().manual_seed(9)
    c, (h, w) = tracker.hidden_dim, a.feat_size
    frames = torch.randn(2, c, h, w, generator=g)
    position = torch.randn(1, c, h, w, generator=g)
    frame_index = torch.tensor([0, 0, 0, 1, 1])
    return bank, frames, position, frame_index


def test_the_batch_mixes_layouts(batch):
    bank = batch[0]
    assert bank.spatial_valid is not None and bank.pointer_valid is not None
    counts = [(int(s), int(p)) for s, p in zip(bank.spatial_valid.sum(1), bank.pointer_valid.sum(1), strict=True)]
    assert len(set(counts)) == 3 and (0, 0) in counts
    # objects with the same counts in different slots: a group must pack each object's own entries
    same = [i for i, c in enumerate(counts) if c == (2, 2)]
    assert len({tuple(bank.spatial_valid[i].tolist()) for i in same}) > 1


def alone(bank: MemoryBank, i: int) -> MemoryBank:
    """Object ``i``'s bank holding only its valid entries: nothing padded, nothing masked."""
    s = slice(None) if bank.spatial_valid is None else bank.spatial_valid[i]
    p = slice(None) if bank.pointer_valid is None else bank.pointer_valid[i]
    return MemoryBank(
        spatial=bank.spatial[i : i + 1, s], spatial_offsets=bank.spatial_offsets[i : i + 1, s],
        pointers=bank.pointers[i : i + 1, p], pointer_offsets=bank.pointer_offsets[i : i + 1, p],
    )


@torch.inference_mode()
def test_no_attention_mask_reaches_sdpa_and_no_device_read(tracker, batch):
    bank, frames, position, frame_index = batch
    with SdpaSpy() as spy, count_host_reads() as reads:
        tracker.condition_on_memory(frames, position, bank, frame_index=frame_index)
    assert spy.masks and all(m is None for m in spy.masks)
    assert reads.count == 0  # gather_banks handed the layout over on the host
    # a bank with device masks only: one counted read of the layout, still no mask
    device_only = dataclasses.replace(bank, spatial_valid_host=None, pointer_valid_host=None)
    with SdpaSpy() as spy, count_host_reads() as reads:
        tracker.condition_on_memory(frames, position, device_only, frame_index=frame_index)
    assert spy.masks and all(m is None for m in spy.masks) and reads.count == 1


@torch.inference_mode()
def test_memory_attention_mask_argument_runs_unmasked(tracker):
    g = torch.Generator().manual_seed(4)
    grid, c = 16, tracker.hidden_dim
    feats, memory = torch.randn(2, grid, c, generator=g), torch.randn(2, 3 * grid + 4, 64, generator=g)
    pos = torch.randn(memory.shape, generator=g)
    mask = torch.ones(2, 3 * grid + 4, dtype=torch.bool)
    mask[1, grid : 2 * grid] = False
    mask[1, -3:] = False
    with SdpaSpy() as spy:
        out = tracker.memory_attention(feats, memory, pos, num_object_pointer_tokens=4, memory_mask=mask, feat_size=(4, 4))
    assert spy.masks and all(m is None for m in spy.masks)
    keep = mask[1].nonzero().squeeze(1)
    ref = tracker.memory_attention(feats[1:], memory[1:, keep], pos[1:, keep], num_object_pointer_tokens=1, feat_size=(4, 4))
    torch.testing.assert_close(out[1:], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="whole spatial memory frames"):
        mask[0, 3] = False
        tracker.memory_attention(feats, memory, pos, num_object_pointer_tokens=4, memory_mask=mask, feat_size=(4, 4))


@torch.inference_mode()
def test_grouped_batch_equals_each_object_alone(tracker, batch):
    bank, frames, position, frame_index = batch
    out = tracker.condition_on_memory(frames, position, bank, frame_index=frame_index)
    assert out.shape == (5, tracker.hidden_dim, *frames.shape[-2:])
    for i, f in enumerate(frame_index.tolist()):
        ref = tracker.condition_on_memory(frames[f : f + 1], position, alone(bank, i))
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-5, atol=1e-5)
    no_memory = int((bank.spatial_valid.sum(1) + bank.pointer_valid.sum(1) == 0).nonzero())
    expected = tracker.no_memory_features(frames[frame_index[no_memory]])
    torch.testing.assert_close(out[no_memory], expected[0], rtol=0, atol=0)


@torch.inference_mode()
def test_unpadded_batch_on_two_frames_equals_each_object_alone(tracker, batch):
    bank, frames, position, _ = batch
    whole = MemoryBank(spatial=bank.spatial[:, :2], spatial_offsets=torch.tensor([[0, 1]] * 5),
                       pointers=bank.pointers[:, :2], pointer_offsets=torch.tensor([[2.0, 1.0]] * 5))
    frame_index = torch.tensor([1, 0, 1, 1, 0])
    out = tracker.condition_on_memory(frames, position, whole, frame_index=frame_index)
    for i, f in enumerate(frame_index.tolist()):
        ref = tracker.condition_on_memory(frames[f : f + 1], position, alone(whole, i))
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_one_frame_expanded_over_objects_matches_per_object_features(tracker, batch):
    bank, frames, position, _ = batch
    one = frames[:1].expand(5, -1, -1, -1)
    shared = tracker.condition_on_memory(one, position, bank)
    copies = tracker.condition_on_memory(one.contiguous(), position.expand(5, -1, -1, -1).contiguous(), bank)
    torch.testing.assert_close(shared, copies, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_layer0_self_attention_runs_once_per_frame(tracker, batch):
    bank, frames, position, frame_index = batch
    seen: dict[int, list[int]] = {0: [], 1: []}
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, args, _o, i=i: seen[i].append(args[0].shape[0]))
        for i, layer in enumerate(tracker.memory_attention.layers)
    ]
    try:
        tracker.condition_on_memory(frames, position, bank, frame_index=frame_index)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen[0] == [2]  # both frames in one call, not once per object
    assert sum(seen[1]) == 4  # layer 1: every object with memory (the memory-less one skips attention)


@torch.inference_mode()
def test_rope_tables_cached_per_dtype_and_rotation_matches_the_definition(tracker):
    attn = tracker.memory_attention
    attn._rope_cache.clear()
    t32 = attn.rope(4, 4, torch.device("cpu"), torch.float32)
    assert attn.rope(4, 4, torch.device("cpu"), torch.float32) is t32
    t16 = attn.rope(4, 4, torch.device("cpu"), torch.bfloat16)
    assert t16.cos.dtype == torch.bfloat16 and len(attn._rope_cache) == 2
    # rotation of adjacent pairs (2i, 2i+1) by the axial angles, written out in fp32
    x = torch.randn(3, 16, 1, attn.head_dim)
    cos, sin = axial_rope(4, 4, attn.head_dim, attn.rope_theta)
    pairs = x.unflatten(-1, (-1, 2))
    expected = x * cos[:, None] + torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2) * sin[:, None]
    torch.testing.assert_close(rotate_(torch.empty_like(x), x, t32), expected, rtol=1e-6, atol=1e-6)


class LargestFloat32(TorchDispatchMode):
    """Largest fp32 tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.numel = max(self.numel, t.numel())
        return out


@torch.inference_mode()
def test_bf16_memory_attention_makes_no_fp32_copies_of_keys(tracker, batch):
    bank, frames, position, frame_index = batch
    model = TrackerModel(tracker.cfg).eval()
    model.load_state_dict(tracker.state_dict())
    model = model.to(torch.bfloat16)
    args = (frames.bfloat16(), position.bfloat16(), bank)
    model.condition_on_memory(*args, frame_index=frame_index)  # builds the RoPE tables
    with LargestFloat32() as seen:
        out = model.condition_on_memory(*args, frame_index=frame_index)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # fp32 only where angles need it: the sine encodings of pointer distances ([N, P, C]), never
    # queries or keys (one frame of queries alone is larger than that here)
    pointer_encodings = bank.pointers.shape[0] * bank.pointers.shape[1] * model.hidden_dim
    assert seen.numel <= pointer_encodings < frame_index.numel() * frames[0].numel()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a CUDA device")
@torch.inference_mode()
def test_cuda_bf16_runs_on_the_flash_kernel_only(tracker, batch):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bank, frames, position, frame_index = batch
    model = TrackerModel(tracker.cfg).eval()
    model.load_state_dict(tracker.state_dict())
    model = model.to("cuda", torch.bfloat16)
    cuda_bank = MemoryBank(**{
        f.name: (v.cuda() if isinstance(v := getattr(bank, f.name), torch.Tensor) else v)
        for f in dataclasses.fields(bank)
    })
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # any call the flash kernel cannot take raises
        out = model.condition_on_memory(frames.cuda().bfloat16(), position.cuda().bfloat16(), cuda_bank,
                                        frame_index=frame_index.cuda())
    expected = tracker.condition_on_memory(frames, position, bank, frame_index=frame_index)
    assert ((out.float().cpu() - expected).norm() / expected.norm()).item() < 0.05
