"""Parity of the tracker modules with transformers' SAM 3 tracker (random weights, fp32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.modeling.tracker import MemoryBank, TrackerModel
from sam3_runtime.modeling.tracker.common import NO_OBJECT_SCORE
from tests.parity.hf_reference import hf_video_config, hf_video_model, reference_shapes


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    ref = ref.to(ours.dtype)
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def hf_video():
    return hf_video_model(Sam3Config.tiny())


@pytest.fixture(scope="module")
def pair(hf_video):
    ours = TrackerModel(Sam3Config.tiny().tracker).eval()
    ours.load_state_dict(hf_video.tracker_model.state_dict(), strict=True)
    return ours, hf_video.tracker_model


@pytest.fixture(scope="module")
def pair_runnable():
    cfg = Sam3Config.tiny()
    hf = hf_video_model(cfg, seed=3).tracker_model
    ours = TrackerModel(cfg.tracker).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return ours, hf


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


# -- weight names ----------------------------------------------------------------------------


def test_hf_video_state_dict_prefix_is_single_tracker_model(hf_video):
    full = [k for k in hf_video.state_dict() if k.startswith("tracker_model.")]
    assert not any(k.startswith("tracker_model.tracker_model.") for k in full)
    assert sorted(full) == sorted("tracker_model." + k for k in hf_video.tracker_model.state_dict())


def test_tiny_state_dict_matches_hf(pair):
    ours, hf = pair
    assert _shapes(ours.state_dict()) == _shapes(hf.state_dict())


def test_full_size_keys_and_shapes_match_reference_tsv():
    ref = reference_shapes("tracker_model.")
    assert len(ref) == 307
    with torch.device("meta"):
        ours = TrackerModel(Sam3Config.full().tracker)
    assert _shapes(ours.state_dict()) == ref
    # and the reference list is what transformers builds for the same config
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoModel

    with torch.device("meta"):
        hf = Sam3TrackerVideoModel(hf_video_config(Sam3Config.full()).tracker_config, remove_vision_encoder=True)
    assert _shapes(hf.state_dict()) == ref


# -- module parity (tiny preset) --------------------------------------------------------------


@torch.no_grad()
def test_prompt_encoder_parity(pair):
    ours, hf = pair
    g = torch.Generator().manual_seed(0)
    n, size = 3, ours.image_size
    points = torch.rand(n, 4, 2, generator=g) * size
    labels = torch.tensor([[1, 0, -1, -10], [1, 1, 0, -10], [0, 2, 3, 1]])
    boxes = torch.sort(torch.rand(n, 2, 2, generator=g) * size, dim=1).values.reshape(n, 4)
    masks = torch.randn(n, 1, *ours.prompt_encoder.mask_input_size, generator=g)

    cases = [
        dict(points=points, labels=labels, boxes=boxes, masks=masks),
        dict(points=points, labels=labels, boxes=None, masks=None),
        dict(points=None, labels=None, boxes=boxes, masks=masks),
    ]
    for case in cases:
        sparse, dense = ours.prompt_encoder(case["points"], case["labels"], case["boxes"], case["masks"])
        ref_sparse, ref_dense = hf.prompt_encoder(
            input_points=None if case["points"] is None else case["points"][:, None],
            input_labels=None if case["labels"] is None else case["labels"][:, None],
            input_boxes=None if case["boxes"] is None else case["boxes"][:, None],
            input_masks=case["masks"],
        )
        assert_parity(sparse, ref_sparse[:, 0])
        assert_parity(dense, ref_dense)
    assert sparse.shape[1] == 3 and dense.shape[0] == n

    assert_parity(ours.image_positional_embeddings(torch.float32), hf.get_image_wide_positional_embeddings())


@torch.no_grad()
@pytest.mark.parametrize("multimask,thresh", [(True, None), (False, None), (False, -1.0), (False, 2.0)])
def test_mask_decoder_parity(pair, multimask, thresh):
    ours, hf = pair
    g = torch.Generator().manual_seed(1)
    n, c = 4, ours.hidden_dim
    h, w = ours.prompt_encoder.image_embedding_size
    image = torch.randn(n, c, h, w, generator=g)
    pe = ours.image_positional_embeddings(torch.get_default_dtype())
    sparse = torch.randn(n, 3, c, generator=g)
    dense = torch.randn(n, c, h, w, generator=g)
    s0 = torch.randn(n, c // 8, 4 * h, 4 * w, generator=g)
    s1 = torch.randn(n, c // 4, 2 * h, 2 * w, generator=g)

    saved = (ours.mask_decoder.stability_thresh, hf.mask_decoder.dynamic_multimask_stability_thresh)
    if thresh is not None:
        ours.mask_decoder.stability_thresh = hf.mask_decoder.dynamic_multimask_stability_thresh = thresh
    try:
        out = ours.mask_decoder(image, pe, sparse, dense, (s0, s1), multimask)
        ref_masks, ref_iou, ref_tokens, ref_obj = hf.mask_decoder(
            image_embeddings=image,
            image_positional_embeddings=pe.expand(n, -1, -1, -1),
            sparse_prompt_embeddings=sparse[:, None],
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=[s0, s1],
        )
    finally:
        ours.mask_decoder.stability_thresh, hf.mask_decoder.dynamic_multimask_stability_thresh = saved
    k = 3 if multimask else 1
    assert out.masks.shape == (n, k, 4 * h, 4 * w)
    assert_parity(out.masks, ref_masks[:, 0])
    assert_parity(out.iou_scores, ref_iou[:, 0])
    assert_parity(out.mask_tokens, ref_tokens[:, 0])
    assert_parity(out.object_score_logits, ref_obj[:, 0])


@torch.no_grad()
def test_memory_encoder_parity(pair):
    ours, hf = pair
    g = torch.Generator().manual_seed(2)
    n, c = 3, ours.hidden_dim
    h, w = ours.prompt_encoder.image_embedding_size
    feats = torch.randn(n, c, h, w, generator=g)
    masks = 10 * torch.randn(n, 1, 16 * h, 16 * w, generator=g)
    mem, pos = ours.memory_encoder(feats, masks)
    ref_mem, ref_pos = hf.memory_encoder(feats, masks)
    assert mem.shape == (n, ours.mem_dim, h, w)
    assert_parity(mem, ref_mem)
    assert_parity(pos, ref_pos)
    # a batch-1 feature map is shared by all objects
    mem1, _ = ours.memory_encoder(feats[:1], masks)
    assert_parity(mem1, hf.memory_encoder(feats[:1].expand(n, -1, -1, -1), masks)[0])


def _hf_memory_attention(hf, feats, feat_pos, memory, memory_pos, num_ptr):
    """transformers' memory attention on batch-first inputs (it is sequence-first)."""
    out = hf.memory_attention(
        current_vision_features=feats.transpose(0, 1),
        memory=memory.transpose(0, 1),
        current_vision_position_embeddings=feat_pos.transpose(0, 1),
        memory_posision_embeddings=memory_pos.transpose(0, 1),
        num_object_pointer_tokens=num_ptr,
    )
    return out[0]  # [1, N, L, C] -> [N, L, C]


@torch.no_grad()
def test_memory_attention_parity(pair):
    ours, hf = pair
    g = torch.Generator().manual_seed(3)
    n, c = 3, ours.hidden_dim
    h, w = ours.prompt_encoder.image_embedding_size
    L, kv = h * w, 64  # noqa: N806
    frames, ptr_tokens = 3, 5
    feats = torch.randn(n, L, c, generator=g)
    feat_pos = torch.randn(n, L, c, generator=g)
    memory = torch.randn(n, frames * L + ptr_tokens, kv, generator=g)
    memory_pos = torch.randn(n, frames * L + ptr_tokens, kv, generator=g)

    out = ours.memory_attention(feats, memory, memory_pos, feature_pos=feat_pos, num_object_pointer_tokens=ptr_tokens)
    assert out.shape == (n, L, c)
    assert_parity(out, _hf_memory_attention(hf, feats, feat_pos, memory, memory_pos, ptr_tokens))

    # padded batch: object i keeps frames_i spatial memories and ptr_i pointer tokens
    keep = [(3, 5), (1, 0), (2, 2)]
    mask = torch.zeros(n, frames * L + ptr_tokens, dtype=torch.bool)
    for i, (f, p) in enumerate(keep):
        mask[i, : f * L] = True
        mask[i, frames * L : frames * L + p] = True
    out = ours.memory_attention(
        feats, memory, memory_pos, feature_pos=feat_pos, num_object_pointer_tokens=ptr_tokens, memory_mask=mask
    )
    for i, (f, p) in enumerate(keep):
        sel = torch.cat((torch.arange(f * L), frames * L + torch.arange(p)))
        ref = _hf_memory_attention(
            hf, feats[i : i + 1], feat_pos[i : i + 1], memory[i : i + 1, sel], memory_pos[i : i + 1, sel], p
        )
        assert_parity(out[i : i + 1], ref)


# -- tracker building blocks (runnable tiny tracker) ----------------------------------------


def _frame(model, g, n):
    c = model.hidden_dim
    h, w = model.prompt_encoder.image_embedding_size
    feats = torch.randn(n, c, h, w, generator=g)
    s0 = torch.randn(n, c // 8, 4 * h, 4 * w, generator=g)
    s1 = torch.randn(n, c // 4, 2 * h, 2 * w, generator=g)
    return feats, s0, s1


@torch.no_grad()
def test_decode_masks_parity(pair_runnable):
    ours, hf = pair_runnable
    g = torch.Generator().manual_seed(4)
    n, size = 4, ours.image_size
    feats, s0, s1 = _frame(ours, g, n)
    points = torch.rand(n, 2, 2, generator=g) * size
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -10]])
    boxes = torch.sort(torch.rand(n, 2, 2, generator=g) * size, dim=1).values.reshape(n, 4)
    mask_in = torch.randn(n, 1, 28, 28, generator=g)  # not the 4h x 4w size: gets resized
    cases = [
        dict(multimask_output=True),
        dict(points=points[:, :1], point_labels=labels[:, :1], multimask_output=True),
        dict(points=points, point_labels=labels, boxes=boxes, multimask_output=False),
        dict(mask_inputs=mask_in, multimask_output=False),
        dict(boxes=boxes, mask_inputs=mask_in, multimask_output=True),
    ]
    # random weights put every object score near +0.15; centre them so that both the visible
    # and the absent (no-object pointer, NO_OBJECT_SCORE masks) paths are exercised
    # (midway between the two middle scores: torch.median would put one object exactly at 0,
    # where rounding alone decides whether it is visible)
    shift = -ours.decode_masks(feats, (s0, s1)).object_score_logits.flatten().float().quantile(0.5)
    biases = [m.mask_decoder.pred_obj_score_head.proj_out.bias for m in (ours, hf)]
    for b in biases:
        b += shift
    try:
        _check_decode_cases(ours, hf, feats, s0, s1, cases)
    finally:
        for b in biases:
            b -= shift


def _check_decode_cases(ours, hf, feats, s0, s1, cases):
    n = feats.shape[0]
    seen_visible = set()
    for case in cases:
        out = ours.decode_masks(feats, (s0, s1), return_high_res_masks=True, **case)
        for i in range(n):
            ref = hf._single_frame_forward(
                image_embeddings=[s0[i : i + 1], s1[i : i + 1], feats[i : i + 1]],
                input_points=None if "points" not in case else case["points"][i : i + 1, None],
                input_labels=None if "points" not in case else case["point_labels"][i : i + 1, None],
                input_boxes=None if "boxes" not in case else case["boxes"][i : i + 1, None],
                input_masks=None if "mask_inputs" not in case else case["mask_inputs"][i : i + 1],
                multimask_output=case["multimask_output"],
            )
            assert_parity(out.low_res_masks[i], ref.pred_masks.reshape(out.low_res_masks[i].shape))
            assert_parity(out.high_res_masks[i], ref.high_res_masks.reshape(out.high_res_masks[i].shape))
            assert_parity(out.iou_scores[i], ref.iou_scores.reshape(-1))
            assert_parity(out.object_score_logits[i], ref.object_score_logits.reshape(1))
            assert_parity(out.object_pointer[i], ref.object_pointer.reshape(-1))
        visible = out.object_score_logits[:, 0] > 0
        seen_visible.update(visible.tolist())
        absent = ~visible
        assert torch.all(out.low_res_masks[absent] == NO_OBJECT_SCORE)
        assert torch.equal(out.object_pointer[absent], ours.no_object_pointer.expand(int(absent.sum()), -1))
    assert seen_visible == {True, False}, "inputs should exercise both visible and absent objects"


@torch.no_grad()
def test_init_from_masks_parity(pair_runnable):
    ours, hf = pair_runnable
    g = torch.Generator().manual_seed(5)
    n = 3
    feats, s0, s1 = _frame(ours, g, n)
    masks = torch.rand(n, 1, 40, 40, generator=g) > 0.6
    masks[1] = False  # an empty mask: object absent
    out = ours.init_from_masks(feats, (s0, s1), masks)
    for i in range(n):
        ref = hf._use_mask_as_output(feats[i : i + 1], [s0[i : i + 1], s1[i : i + 1]], masks[i : i + 1])
        assert_parity(out.low_res_masks[i], ref.pred_masks[0])
        assert_parity(out.high_res_masks[i], ref.high_res_masks[0])
        assert_parity(out.object_pointer[i], ref.object_pointer.reshape(-1))
        assert_parity(out.object_score_logits[i], ref.object_score_logits.reshape(1))
        assert_parity(out.iou_scores[i], ref.iou_scores.reshape(-1))
    assert out.object_score_logits[:, 0].tolist() == [10.0, -10.0, 10.0]


@torch.no_grad()
def test_encode_memory_parity(pair_runnable):
    ours, hf = pair_runnable
    g = torch.Generator().manual_seed(6)
    n, c = 4, ours.hidden_dim
    h, w = ours.prompt_encoder.image_embedding_size
    feats = torch.randn(1, c, h, w, generator=g)  # one frame shared by all objects
    logits = 8 * torch.randn(n, 1, ours.image_size, ours.image_size, generator=g)
    scores = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    results = {}
    for from_prompt in (False, True):
        ref_feat, ref_pos = hf._encode_new_memory(
            current_vision_feats=feats.flatten(2).permute(2, 0, 1).expand(-1, n, -1),
            pred_masks_high_res=logits,
            object_score_logits=scores[:, :, None],
            is_mask_from_pts=from_prompt,
        )
        ref_feat = ref_feat.permute(1, 2, 0).reshape(n, -1, h, w)
        ref_pos = ref_pos.permute(1, 2, 0).reshape(n, -1, h, w)
        out = ours.encode_memory(feats, logits, scores, binarize=from_prompt)
        assert out.features.dtype == torch.bfloat16 and out.features.shape == (n, 64, h, w)
        # both sides round to bfloat16 at the end; allow one bf16 ulp
        torch.testing.assert_close(out.features.float(), ref_feat.float(), rtol=8e-3, atol=1e-2)
        assert_parity(out.pos_enc, ref_pos)
        results[from_prompt] = ours.encode_memory(feats, logits, scores, binarize=from_prompt, memory_dtype=None)
        torch.testing.assert_close(results[from_prompt].features, ref_feat.float(), rtol=8e-3, atol=1e-2)
    # the binarize flag is per object
    mixed = torch.tensor([True, False, False, True])
    out = ours.encode_memory(feats, logits, scores, binarize=mixed, memory_dtype=None)
    expected = torch.where(mixed[:, None, None, None], results[True].features, results[False].features)
    assert_parity(out.features, expected)
    # low-res (4h) logits take the same path (resized to the encoder input)
    low = ours.encode_memory(feats, logits[:, :, ::4, ::4], scores, memory_dtype=None)
    assert low.features.shape == (n, 64, h, w) and torch.isfinite(low.features).all()


def _hf_condition(hf, feats, feat_pos, spatial, spatial_offsets, pointers, pointer_offsets):
    """transformers' memory conditioning for one object (its batch-1 code path)."""
    c, h, w = feats.shape
    L = h * w  # noqa: N806
    pos_enc = hf.memory_encoder.position_encoding((1, hf.mem_dim, h, w), feats.device, feats.dtype)
    pos_enc = pos_enc.flatten(2).permute(2, 0, 1)
    outputs = [
        (int(o), {"maskmem_features": m.flatten(1).T[:, None], "maskmem_pos_enc": pos_enc})
        for m, o in zip(spatial, spatial_offsets, strict=True)
    ]
    memories, positions = hf._build_memory_attention_inputs(outputs, feats.device)
    num_ptr = 0
    if len(pointers):
        ptr, ptr_pos = hf._process_object_pointers(
            [int(o) for o in pointer_offsets],
            [p[None] for p in pointers],
            hf.config.max_object_pointers_in_encoder,
            1,
            c,
            feats.device,
        )
        memories.append(ptr)
        positions.append(ptr_pos)
        num_ptr = ptr.shape[0]
    out = hf.memory_attention(
        current_vision_features=feats.flatten(1).T[:, None],
        current_vision_position_embeddings=feat_pos.flatten(1).T[:, None],
        memory=torch.cat(memories),
        memory_posision_embeddings=torch.cat(positions),
        num_object_pointer_tokens=num_ptr,
    )
    assert out.shape[-2] == L
    return out.reshape(L, c).T.reshape(c, h, w)


@torch.no_grad()
def test_condition_on_memory_parity(pair_runnable):
    ours, hf = pair_runnable
    g = torch.Generator().manual_seed(7)
    c, cm = ours.hidden_dim, ours.mem_dim
    h, w = ours.prompt_encoder.image_embedding_size
    # (spatial offsets, pointer offsets) per object; 0 = conditioning frame
    plans = [([0, 1, 2], [5, 1, 2]), ([0], []), ([], []), ([0, 6, 5, 4, 3, 2, 1], list(range(1, 16)) + [40])]
    n, s_max, p_max = len(plans), 7, 16
    feats = torch.randn(n, c, h, w, generator=g)
    feat_pos = torch.randn(n, c, h, w, generator=g)
    bank = MemoryBank(
        spatial=torch.randn(n, s_max, cm, h, w, generator=g),
        spatial_offsets=torch.zeros(n, s_max, dtype=torch.long),
        spatial_valid=torch.zeros(n, s_max, dtype=torch.bool),
        pointers=torch.randn(n, p_max, c, generator=g),
        pointer_offsets=torch.zeros(n, p_max),
        pointer_valid=torch.zeros(n, p_max, dtype=torch.bool),
    )
    for i, (s_off, p_off) in enumerate(plans):
        bank.spatial_offsets[i, : len(s_off)] = torch.tensor(s_off, dtype=torch.long)
        bank.spatial_valid[i, : len(s_off)] = True
        bank.pointer_offsets[i, : len(p_off)] = torch.tensor(p_off, dtype=torch.float32)
        bank.pointer_valid[i, : len(p_off)] = True

    out = ours.condition_on_memory(feats, feat_pos, bank)
    assert out.shape == (n, c, h, w)
    for i, (s_off, p_off) in enumerate(plans):
        if not s_off and not p_off:
            assert_parity(out[i], feats[i] + hf.no_memory_embedding.reshape(c, 1, 1))
            continue
        ref = _hf_condition(
            hf, feats[i], feat_pos[i], bank.spatial[i, : len(s_off)], s_off, bank.pointers[i, : len(p_off)], p_off
        )
        assert_parity(out[i], ref)

    # unpadded bank (no validity masks), one frame's features shared by the objects
    sub = MemoryBank(
        spatial=bank.spatial[:, :2],
        spatial_offsets=torch.tensor([[0, 1]] * n),
        pointers=bank.pointers[:, :3],
        pointer_offsets=torch.tensor([[3.0, 1.0, 2.0]] * n),
    )
    out = ours.condition_on_memory(feats[:1], feat_pos[:1], sub)
    for i in range(n):
        ref = _hf_condition(hf, feats[0], feat_pos[0], sub.spatial[i], [0, 1], sub.pointers[i], [3, 1, 2])
        assert_parity(out[i], ref)


@torch.no_grad()
def test_memory_channels_other_than_64_are_rejected_clearly():
    tracker = dataclasses.replace(Sam3Config.tiny().tracker, memory_encoder_output_channels=16)
    ours = TrackerModel(tracker).eval()
    h, w = ours.prompt_encoder.image_embedding_size
    feats = torch.zeros(1, ours.hidden_dim, h, w)
    bank = MemoryBank(spatial=torch.zeros(1, 1, ours.mem_dim, h, w), spatial_offsets=torch.zeros(1, 1))
    with pytest.raises(ValueError, match="64-channel"):
        ours.condition_on_memory(feats, feats, bank)


# -- reduced precision ----------------------------------------------------------------------


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def test_bf16_smoke(pair_runnable):
    ours32, _ = pair_runnable
    ours16 = TrackerModel(ours32.cfg).eval()
    ours16.load_state_dict(ours32.state_dict())
    ours16 = ours16.to(torch.bfloat16)
    g = torch.Generator().manual_seed(8)
    n = 3
    feats, s0, s1 = _frame(ours32, g, n)
    feat_pos = torch.randn(feats.shape, generator=g)
    masks = torch.rand(n, 1, 32, 32, generator=g) > 0.5
    points = torch.rand(n, 1, 2, generator=g) * ours32.image_size
    labels = torch.ones(n, 1, dtype=torch.long)

    def run(model, dtype):
        f, p, hr = feats.to(dtype), feat_pos.to(dtype), (s0.to(dtype), s1.to(dtype))
        init = model.init_from_masks(f, hr, masks)
        mem = model.encode_memory(f, init.high_res_masks, init.object_score_logits, binarize=True)
        bank = MemoryBank(
            spatial=mem.features[:, None],
            spatial_offsets=torch.zeros(n, 1, dtype=torch.long),
            pointers=init.object_pointer[:, None],
            pointer_offsets=torch.ones(n, 1),
        )
        cond = model.condition_on_memory(f, p, bank)
        dec = model.decode_masks(cond, hr, points=points, point_labels=labels, multimask_output=True)
        return init, mem, cond, dec

    i32, m32, c32, d32 = run(ours32, torch.float32)
    i16, m16, c16, d16 = run(ours16, torch.bfloat16)
    for t in (i16.low_res_masks, i16.object_pointer, m16.features, c16, d16.low_res_masks, d16.object_pointer):
        assert t.dtype == torch.bfloat16
        assert torch.isfinite(t).all()
    assert _rel_err(i16.object_pointer, i32.object_pointer) < 0.05
    assert _rel_err(m16.features, m32.features) < 0.05
    assert _rel_err(c16, c32) < 0.05
    assert _rel_err(d16.object_score_logits, d32.object_score_logits) < 0.1
