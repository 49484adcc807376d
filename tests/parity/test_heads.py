"""Parity of the detector's mask head and geometry encoder with transformers' SAM 3.

transformers' geometry encoder pools box features with ``torchvision.ops.roi_align``;
torchvision is not installed next to our torch, so the reference model gets a slow,
loop-per-sample transcription of torchvision's CPU kernel (``reference_roi_align``). Our
vectorised ``roi_align`` is checked against that transcription separately, including boxes
that leave the feature map and both sampling modes.
"""

from __future__ import annotations

import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.modeling.geometry_encoder import GeometryEncoder, roi_align
from sam3_runtime.modeling.mask_head import MaskHead
from tests.devices import widened
from tests.parity.hf_reference import reference_roi_align, reference_shapes

# -- helpers ------------------------------------------------------------------------------------


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * 0.1 * float(ref.abs().max()) + 1e-7)
    rel = (ours.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-12)
    assert rel < widened(rtol), f"relative error {rel:.2e}"


@pytest.fixture(scope="module")
def tiny():
    return Sam3Config.tiny()


@pytest.fixture(scope="module")
def hf_detector(tiny):
    from tests.parity.hf_reference import hf_video_model

    return hf_video_model(tiny).detector_model


def _random_boxes(gen: torch.Generator, n: int, k: int) -> torch.Tensor:
    centre = torch.rand(n, k, 2, generator=gen)
    size = 0.05 + 0.9 * torch.rand(n, k, 2, generator=gen)
    return torch.cat((centre, size), dim=-1)  # some boxes reach past the image border


# -- ROI align ----------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_matches_torchvision_rule(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 5, 13, 10, generator=gen)
    x0y0 = torch.rand(2, 4, 2, generator=gen) * torch.tensor([12.0, 15.0]) - 2.0
    wh = torch.rand(2, 4, 2, generator=gen) * 9.0
    boxes = torch.cat((x0y0, x0y0 + wh), dim=-1)
    boxes[0, 0] = torch.tensor([3.0, 4.0, 3.2, 4.1])  # smaller than a pixel
    boxes[1, 1] = torch.tensor([-3.0, -2.5, 14.0, 16.0])  # covers and overhangs the whole map
    ours = roi_align(feats, boxes, 4, sampling_ratio=sampling_ratio, aligned=aligned)
    ref = reference_roi_align(feats.double(), list(boxes.double()), 4, sampling_ratio=sampling_ratio, aligned=aligned)
    torch.testing.assert_close(ours.double().flatten(0, 1), ref, rtol=1e-5, atol=1e-5)


# -- geometry encoder ---------------------------------------------------------------------------


def _geometry_inputs(tiny, n=3, k=4):
    gen = torch.Generator().manual_seed(7)
    d = tiny.detector.geometry_encoder_config.hidden_size
    side = tiny.detector.vision_config.backbone_feature_sizes[-1][0]
    feats = torch.randn(n, d, side, side, generator=gen)
    pos = torch.randn(n, d, side, side, generator=gen)
    boxes = _random_boxes(gen, n, k)
    labels = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 0]])[:n, :k]
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])[:n, :k]
    labels = torch.where(mask, labels, 0)  # transformers maps padding (-10) to label 0
    return boxes, labels, mask, feats, pos


def _ours_geometry(tiny, hf_detector):
    ours = GeometryEncoder(tiny.detector.geometry_encoder_config).eval()
    ours.load_state_dict(hf_detector.geometry_encoder.state_dict(), strict=True)
    return ours


@torch.no_grad()
def test_geometry_encoder_parity(tiny, hf_detector, hf_roi_align):
    boxes, labels, mask, feats, pos = _geometry_inputs(tiny)
    ours = _ours_geometry(tiny, hf_detector)
    ref = hf_detector.geometry_encoder(
        box_embeddings=boxes, box_mask=mask, box_labels=labels, img_feats=(feats,), img_pos_embeds=(pos,)
    )
    out = ours(boxes, feats, pos, box_labels=labels, box_mask=mask)
    assert out.tokens.shape == (3, 5, tiny.detector.geometry_encoder_config.hidden_size)
    assert torch.equal(out.mask, ref.attention_mask)
    assert out.mask.sum(1).tolist() == [5, 4, 2]
    _assert_close(out.tokens, ref.last_hidden_state)

    # negative vs positive labels and the pooled image content both matter
    flipped = ours(boxes, feats, pos, box_labels=1 - labels, box_mask=mask)
    assert not torch.allclose(flipped.tokens, out.tokens, atol=1e-3)
    shifted = ours(boxes, feats.roll(2, dims=-1), pos, box_labels=labels, box_mask=mask)
    assert not torch.allclose(shifted.tokens, out.tokens, atol=1e-3)


@torch.no_grad()
def test_geometry_encoder_image_index_and_no_boxes(tiny, hf_detector, hf_roi_align):
    boxes, labels, mask, feats, pos = _geometry_inputs(tiny)
    ours = _ours_geometry(tiny, hf_detector)
    index = torch.tensor([1, 0, 1])
    direct = ours(boxes, feats[index], pos[index], box_labels=labels, box_mask=mask)
    indexed = ours(boxes, feats[:2], pos[:2], box_labels=labels, box_mask=mask, image_index=index)
    torch.testing.assert_close(indexed.tokens, direct.tokens, rtol=1e-6, atol=1e-6)

    # no boxes: the CLS token alone, refined against the image (what transformers computes for K = 0)
    empty = torch.zeros(3, 0, 4)
    none_long = torch.zeros(3, 0, dtype=torch.long)
    ref = hf_detector.geometry_encoder(
        box_embeddings=empty, box_mask=none_long.bool(), box_labels=none_long, img_feats=(feats,), img_pos_embeds=(pos,)
    )
    out = ours(empty, feats, pos, box_labels=none_long, box_mask=none_long.bool())
    assert out.tokens.shape[1] == 1 and out.mask.all()
    _assert_close(out.tokens, ref.last_hidden_state)


# -- mask head ----------------------------------------------------------------------------------


def _mask_inputs(tiny, n=3, num_images=2, q=5, p=6):
    gen = torch.Generator().manual_seed(11)
    d = tiny.detector.mask_decoder_config.hidden_size
    sizes = tiny.detector.vision_config.backbone_feature_sizes  # fine -> coarse: 32, 16, 8
    fpn = [torch.randn(num_images, d, *s, generator=gen) for s in sizes]
    h, w = sizes[-1]
    queries = torch.randn(n, q, d, generator=gen)
    memory = torch.randn(n, h * w, d, generator=gen)
    prompt = torch.randn(n, p, d, generator=gen)
    prompt_mask = torch.ones(n, p, dtype=torch.bool)
    prompt_mask[0, 3:5] = False  # padded text in the middle, exemplar token after it
    prompt_mask[-1, 1:] = False
    return fpn, queries, memory, prompt, prompt_mask


def _ours_mask_head(tiny, hf_detector):
    ours = MaskHead(tiny.detector.mask_decoder_config).eval()
    ours.load_state_dict(hf_detector.mask_decoder.state_dict(), strict=True)
    return ours


@torch.no_grad()
def test_mask_head_parity(tiny, hf_detector):
    fpn, queries, memory, prompt, prompt_mask = _mask_inputs(tiny)
    index = torch.tensor([0, 1, 1])
    ours = _ours_mask_head(tiny, hf_detector)
    ref = hf_detector.mask_decoder(
        decoder_queries=queries,
        backbone_features=[f[index] for f in fpn],
        encoder_hidden_states=memory,
        prompt_features=prompt,
        prompt_mask=prompt_mask,
    )
    out = ours(
        queries, memory, fpn[:2], token_size=fpn[2].shape[-2:], prompt=prompt, prompt_mask=prompt_mask,
        image_index=index, return_semantic=True,
    )
    assert out.mask_logits.shape == (3, 5, *fpn[0].shape[-2:])
    _assert_close(out.mask_logits, ref.pred_masks)
    _assert_close(out.semantic_logits, ref.semantic_seg)

    # skipping the semantic head changes nothing else; queries are independent
    sub = ours(queries[:, 1:3], memory, [f[index] for f in fpn[:2]], token_size=(8, 8), prompt=prompt, prompt_mask=prompt_mask)
    assert sub.semantic_logits is None
    torch.testing.assert_close(sub.mask_logits, out.mask_logits[:, 1:3], rtol=1e-5, atol=1e-5)

    # the prompt really is read, and its padding really is ignored
    changed = prompt.clone()
    changed[0, 3:5] += 5.0
    same = ours(queries, memory, fpn[:2], token_size=(8, 8), prompt=changed, prompt_mask=prompt_mask, image_index=index)
    torch.testing.assert_close(same.mask_logits, out.mask_logits, rtol=1e-5, atol=1e-5)
    changed[0, 0] += 5.0
    moved = ours(queries, memory, fpn[:2], token_size=(8, 8), prompt=changed, prompt_mask=prompt_mask, image_index=index)
    assert not torch.allclose(moved.mask_logits[0], out.mask_logits[0], atol=1e-3)


@torch.no_grad()
def test_mask_head_without_prompt(tiny, hf_detector):
    fpn, queries, memory, _, _ = _mask_inputs(tiny, n=2)
    ours = _ours_mask_head(tiny, hf_detector)
    ref = hf_detector.mask_decoder(decoder_queries=queries, backbone_features=fpn, encoder_hidden_states=memory)
    out = ours(queries, memory, fpn[:2], token_size=(8, 8))
    _assert_close(out.mask_logits, ref.pred_masks)


# -- full-size key/shape coverage ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "build"),
    [
        ("detector_model.mask_decoder.", lambda c: MaskHead(c.detector.mask_decoder_config)),
        ("detector_model.geometry_encoder.", lambda c: GeometryEncoder(c.detector.geometry_encoder_config)),
    ],
)
def test_full_size_keys_match_reference(prefix, build):
    with torch.device("meta"):
        module = build(Sam3Config.full())
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    expected = reference_shapes(prefix)
    assert expected, f"no reference keys under {prefix}"
    assert ours == expected


# -- bf16 ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_bf16_smoke(tiny, hf_detector):
    fpn, queries, memory, prompt, prompt_mask = _mask_inputs(tiny)
    index = torch.tensor([0, 1, 1])
    head = _ours_mask_head(tiny, hf_detector)
    ref = head(queries, memory, fpn[:2], token_size=(8, 8), prompt=prompt, prompt_mask=prompt_mask, image_index=index)
    bf = lambda t: t.to(torch.bfloat16)  # noqa: E731
    out = head.to(torch.bfloat16)(
        bf(queries), bf(memory), [bf(f) for f in fpn[:2]], token_size=(8, 8), prompt=bf(prompt),
        prompt_mask=prompt_mask, image_index=index,
    )
    assert out.mask_logits.dtype == torch.bfloat16 and torch.isfinite(out.mask_logits).all()
    rel = (out.mask_logits.float() - ref.mask_logits).norm() / ref.mask_logits.norm()
    assert rel < 5e-2, rel

    boxes, labels, mask, feats, pos = _geometry_inputs(tiny)
    geo = _ours_geometry(tiny, hf_detector)
    ref_geo = geo(boxes, feats, pos, box_labels=labels, box_mask=mask)
    out_geo = geo.to(torch.bfloat16)(boxes, bf(feats), bf(pos), box_labels=labels, box_mask=mask)  # fp32 boxes are fine
    assert out_geo.tokens.dtype == torch.bfloat16 and torch.isfinite(out_geo.tokens).all()
    rel = (out_geo.tokens.float() - ref_geo.tokens).norm() / ref_geo.tokens.norm()
    assert rel < 5e-2, rel
