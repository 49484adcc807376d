"""Parity of the DETR fusion encoder, decoder and dot-product scoring with transformers' SAM 3."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.modeling.detr_decoder import DetrDecoder
from sam3_runtime.modeling.detr_encoder import DetrEncoder
from sam3_runtime.modeling.layers import box_cxcywh_to_xyxy, inverse_sigmoid
from sam3_runtime.modeling.scoring import DotProductScoring

pytest.importorskip("transformers")
from tests.parity.hf_reference import hf_video_model, reference_shapes  # noqa: E402

TINY = Sam3Config.tiny()
DET = TINY.detector
D = DET.detr_encoder_config.hidden_size
HW = DET.vision_config.backbone_feature_sizes[-1]  # the stride-14 level the detector fuses


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def hf_detector():
    return hf_video_model(TINY).detector_model


@pytest.fixture(scope="module")
def modules(hf_detector):
    enc = DetrEncoder(DET.detr_encoder_config).eval()
    dec = DetrDecoder(DET.detr_decoder_config).eval()
    score = DotProductScoring(DET.detr_decoder_config).eval()
    enc.load_state_dict(hf_detector.detr_encoder.state_dict(), strict=True)
    dec.load_state_dict(hf_detector.detr_decoder.state_dict(), strict=True)
    score.load_state_dict(hf_detector.dot_product_scoring.state_dict(), strict=True)
    return enc, dec, score


def _inputs(num_images: int, num_pairs: int, seed: int = 0):
    """Per-image features + shared sine-like pos, per-pair prompts with right padding."""
    g = torch.Generator().manual_seed(seed)
    h, w = HW
    feats = torch.randn(num_images, D, h, w, generator=g)
    pos = torch.randn(1, D, h, w, generator=g)
    t = 7
    prompt = torch.randn(num_pairs, t, D, generator=g)
    lengths = torch.tensor([t, 3, 5, 1, 6][:num_pairs])
    mask = torch.arange(t)[None] < lengths[:, None]
    return feats, pos, prompt, mask


def _hf_encode(hf_detector, feats, pos, prompt, mask):
    return hf_detector.detr_encoder(
        vision_features=[feats], text_features=prompt, vision_pos_embeds=[pos.expand_as(feats)], text_mask=mask
    )


def test_encoder_parity(hf_detector, modules):
    enc, _, _ = modules
    feats, pos, prompt, mask = _inputs(3, 3)
    with torch.no_grad():
        ref = _hf_encode(hf_detector, feats, pos, prompt, mask)
        ours = enc(feats, pos, prompt, mask)
    assert ours.spatial_shape == HW
    assert ours.image_pos.shape[0] == 1  # the shared position encoding was never copied
    _close(ours.image_tokens, ref.last_hidden_state)
    _close(ours.image_pos.expand_as(ours.image_tokens), ref.pos_embeds_flattened)
    # padding must matter: the same prompts without the mask give other tokens
    with torch.no_grad():
        unmasked = enc(feats, pos, prompt, None)
    assert not torch.allclose(unmasked.image_tokens, ours.image_tokens, atol=1e-3)


def test_encoder_gathers_pairs_from_images(hf_detector, modules):
    """Pairs that share an image match transformers run on explicitly repeated images."""
    enc, _, _ = modules
    feats, pos, prompt, mask = _inputs(2, 4, seed=1)
    image_index = torch.tensor([1, 0, 1, 1])
    with torch.no_grad():
        ref = _hf_encode(hf_detector, feats[image_index], pos, prompt, mask)
        ours = enc(feats, pos, prompt, mask, image_index=image_index)
        per_image_pos = enc(feats, pos.expand(2, -1, -1, -1), prompt, mask, image_index=image_index)
    _close(ours.image_tokens, ref.last_hidden_state)
    _close(per_image_pos.image_tokens, ref.last_hidden_state)
    assert per_image_pos.image_pos.shape[0] == 4


def test_decoder_parity(hf_detector, modules):
    _, dec, _ = modules
    g = torch.Generator().manual_seed(2)
    n, t = 3, 6
    tokens = torch.randn(n, HW[0] * HW[1], D, generator=g)
    pos = torch.randn(1, HW[0] * HW[1], D, generator=g)
    prompt = torch.randn(n, t, D, generator=g)
    mask = torch.arange(t)[None] < torch.tensor([[6], [2], [4]])
    with torch.no_grad():
        ref = hf_detector.detr_decoder(
            vision_features=tokens,
            text_features=prompt,
            vision_pos_encoding=pos.expand_as(tokens),
            text_mask=mask,
            spatial_shapes=torch.tensor([HW]),
        )
        ours = dec(tokens, pos, HW, prompt, mask)
        ref_boxes = (
            inverse_sigmoid(ref.reference_boxes) + hf_detector.detr_decoder.box_head(ref.intermediate_hidden_states)
        ).sigmoid()

    layers, queries = DET.detr_decoder_config.num_layers, DET.detr_decoder_config.num_queries
    assert ours.hidden_states.shape == (layers, n, queries, D)
    assert ours.presence_logits.shape == (layers, n, 1)
    _close(ours.hidden_states, ref.intermediate_hidden_states)
    _close(ours.reference_boxes, ref.reference_boxes)
    _close(ours.pred_boxes, ref_boxes)
    _close(ours.presence_logits, ref.presence_logits)
    _close(ours.pred_boxes_xyxy, box_cxcywh_to_xyxy(ref_boxes[-1]))
    # the boxes actually move between layers (refinement is exercised)
    assert (ours.pred_boxes[-1] - ours.reference_boxes[0]).abs().max() > 1e-2


def test_decoder_box_refinement_at_the_inverse_sigmoid_clamp(hf_detector, modules):
    """Reference boxes at exactly 0 and 1 and just inside (1e-4, 1 - 1e-4): refinement goes through
    ``inverse_sigmoid``, whose eps (1e-3) clamps all four, as transformers' own does."""
    from transformers.models.sam3.modeling_sam3 import inverse_sigmoid as hf_inverse_sigmoid

    _, dec, _ = modules
    ours_dec, hf_dec = copy.deepcopy(dec), copy.deepcopy(hf_detector.detr_decoder)
    near = math.log(1e-4 / (1 - 1e-4))
    edges = torch.tensor([-200.0, near, -near, 200.0])  # sigmoid: exactly 0, 1e-4, 1 - 1e-4, exactly 1
    q = DET.detr_decoder_config.num_queries
    logits = edges[(torch.arange(q)[:, None] + torch.arange(4)[None, :]) % 4]  # every coordinate sees every edge
    with torch.no_grad():
        ours_dec.reference_points.weight.copy_(logits)
        hf_dec.reference_points.weight.copy_(logits)
    start = logits.sigmoid()
    assert {0.0, 1.0} <= set(start.flatten().tolist()) and (start - 1e-4).abs().min() < 1e-8

    g = torch.Generator().manual_seed(5)
    n, t = 2, 4
    tokens = torch.randn(n, HW[0] * HW[1], D, generator=g)
    pos = torch.randn(1, HW[0] * HW[1], D, generator=g)
    prompt = torch.randn(n, t, D, generator=g)
    mask = torch.arange(t)[None] < torch.tensor([[4], [2]])
    with torch.no_grad():
        ref = hf_dec(
            vision_features=tokens, text_features=prompt, vision_pos_encoding=pos.expand_as(tokens),
            text_mask=mask, spatial_shapes=torch.tensor([HW]),
        )
        ours = ours_dec(tokens, pos, HW, prompt, mask)
        deltas = hf_dec.box_head(ref.intermediate_hidden_states)
    ref_boxes = (hf_inverse_sigmoid(ref.reference_boxes) + deltas).sigmoid()
    assert torch.isfinite(ours.pred_boxes).all()
    _close(ours.reference_boxes, ref.reference_boxes)
    _close(ours.pred_boxes, ref_boxes)
    _close(ours.hidden_states, ref.intermediate_hidden_states)
    # the clamp decides these boxes: without it the first refinement would land elsewhere
    unclamped = (hf_inverse_sigmoid(ref.reference_boxes[0], eps=1e-6) + deltas[0]).sigmoid()
    assert (unclamped - ref_boxes[0]).abs().max() > 1e-3


def test_box_attention_bias_matches_reference(hf_detector, modules):
    _, dec, _ = modules
    boxes = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    with torch.no_grad():
        ref = hf_detector.detr_decoder._get_rpb_matrix(boxes, (torch.tensor(HW[0]), torch.tensor(HW[1])))
        ours = dec.box_attention_bias(boxes, HW, torch.get_default_dtype())
        ref_sine = hf_detector.detr_decoder.position_encoding.encode_boxes(boxes)
    assert ours.shape == (2, DET.detr_decoder_config.num_attention_heads, 6, HW[0] * HW[1])
    assert torch.count_nonzero(ours[:, :, 0]) == 0  # presence row
    _close(ours[:, :, 1:], ref)
    _close(dec.position_encoding.encode_boxes(boxes), ref_sine)


def test_scoring_parity(hf_detector, modules):
    _, _, score = modules
    g = torch.Generator().manual_seed(4)
    layers, n, q, t = 2, 3, DET.detr_decoder_config.num_queries, 5
    states = torch.randn(layers, n, q, D, generator=g)
    prompt = torch.randn(n, t, D, generator=g)
    mask = torch.arange(t)[None] < torch.tensor([[5], [1], [3]])
    with torch.no_grad():
        ref = hf_detector.dot_product_scoring(decoder_hidden_states=states, text_features=prompt, text_mask=mask)
        ours = score(states, prompt, mask)
        last_only = score(states[-1], prompt, mask)
        ref_nomask = hf_detector.dot_product_scoring(decoder_hidden_states=states, text_features=prompt)
        ours_nomask = score(states, prompt)
    assert ours.shape == (layers, n, q)
    _close(ours, ref.squeeze(-1))
    _close(last_only, ref[-1].squeeze(-1))
    _close(ours_nomask, ref_nomask.squeeze(-1))
    assert not torch.allclose(ours, ours_nomask, atol=1e-3)


def test_chain_matches_reference_detector_flow(hf_detector, modules):
    """Encoder -> decoder -> scoring wired the way Sam3Model.forward wires them."""
    enc, dec, score = modules
    feats, pos, prompt, mask = _inputs(2, 3, seed=5)
    image_index = torch.tensor([0, 1, 0])
    with torch.no_grad():
        ref_enc = _hf_encode(hf_detector, feats[image_index], pos, prompt, mask)
        ref_dec = hf_detector.detr_decoder(
            vision_features=ref_enc.last_hidden_state,
            text_features=ref_enc.text_features,
            vision_pos_encoding=ref_enc.pos_embeds_flattened,
            text_mask=mask,
            spatial_shapes=ref_enc.spatial_shapes,
        )
        ref_logits = hf_detector.dot_product_scoring(ref_dec.intermediate_hidden_states, prompt, mask).squeeze(-1)

        e = enc(feats, pos, prompt, mask, image_index=image_index)
        d = dec(e.image_tokens, e.image_pos, e.spatial_shape, prompt, mask)
        logits = score(d.hidden_states[-1], prompt, mask)
    _close(d.hidden_states, ref_dec.intermediate_hidden_states)
    _close(d.presence_logits, ref_dec.presence_logits)
    _close(logits, ref_logits[-1])


def test_logit_clamps_match_reference(hf_detector, modules):
    """Presence logits clamp at +-10 and class logits at +-12, as in transformers."""
    _, dec, score = modules
    hf_dec, hf_score = copy.deepcopy(hf_detector.detr_decoder), copy.deepcopy(hf_detector.dot_product_scoring)
    dec, score = copy.deepcopy(dec), copy.deepcopy(score)
    with torch.no_grad():
        for m in (dec, hf_dec):
            m.presence_head.layer3.weight.mul_(1e3)
        for m in (score, hf_score):
            m.query_proj.weight.mul_(1e3)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(2, HW[0] * HW[1], D, generator=g)
    pos = torch.randn(1, HW[0] * HW[1], D, generator=g)
    prompt = torch.randn(2, 4, D, generator=g)
    with torch.no_grad():
        ours = dec(tokens, pos, HW, prompt)
        ref = hf_dec(
            vision_features=tokens,
            text_features=prompt,
            vision_pos_encoding=pos.expand_as(tokens),
            spatial_shapes=torch.tensor([HW]),
        )
        logits = score(ours.hidden_states, prompt)
        ref_logits = hf_score(ours.hidden_states, prompt).squeeze(-1)
    assert ours.presence_logits.abs().max() == 10.0
    assert logits.abs().max() == 12.0
    _close(ours.presence_logits, ref.presence_logits)
    _close(logits, ref_logits)


@pytest.mark.parametrize(
    ("prefix", "build"),
    [
        ("detector_model.detr_encoder.", lambda c: DetrEncoder(c.detr_encoder_config)),
        ("detector_model.detr_decoder.", lambda c: DetrDecoder(c.detr_decoder_config)),
        ("detector_model.dot_product_scoring.", lambda c: DotProductScoring(c.detr_decoder_config)),
    ],
)
def test_full_size_keys_and_shapes(prefix, build):
    expected = reference_shapes(prefix)
    assert expected, f"no reference keys under {prefix}"
    with torch.device("meta"):
        module = build(Sam3Config.full().detector)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_smoke(modules, dtype):
    enc, dec, score = modules
    feats, pos, prompt, mask = _inputs(2, 3, seed=6)
    image_index = torch.tensor([0, 0, 1])
    with torch.no_grad():
        e32 = enc(feats, pos, prompt, mask, image_index=image_index)
        d32 = dec(e32.image_tokens, e32.image_pos, e32.spatial_shape, prompt, mask)
        l32 = score(d32.hidden_states[-1], prompt, mask)

        enc_lp = DetrEncoder(DET.detr_encoder_config).to(dtype).eval()
        dec_lp = DetrDecoder(DET.detr_decoder_config).to(dtype).eval()
        score_lp = DotProductScoring(DET.detr_decoder_config).to(dtype).eval()
        enc_lp.load_state_dict(enc.state_dict())
        dec_lp.load_state_dict(dec.state_dict())
        score_lp.load_state_dict(score.state_dict())
        p = prompt.to(dtype)
        e = enc_lp(feats.to(dtype), pos.to(dtype), p, mask, image_index=image_index)
        d = dec_lp(e.image_tokens, e.image_pos, e.spatial_shape, p, mask)
        logits = score_lp(d.hidden_states[-1], p, mask)

    assert e.image_tokens.dtype == dtype and d.hidden_states.dtype == dtype and logits.dtype == dtype
    assert d.pred_boxes.dtype == torch.float32  # boxes stay fp32 by design
    for t in (e.image_tokens, d.hidden_states, d.pred_boxes, d.presence_logits, logits):
        assert torch.isfinite(t).all()
    rel = (d.hidden_states[-1].float() - d32.hidden_states[-1]).norm() / d32.hidden_states[-1].norm()
    assert rel < 0.1
    assert (d.pred_boxes[-1] - d32.pred_boxes[-1]).abs().max() < 0.1
    assert (logits.float() - l32).abs().max() < 0.1 * l32.abs().max() + 0.1
