"""End-to-end parity of the detector with transformers' ``Sam3Model`` on the same random weights.

Pairs of (image, prompt) are batched the way the runtime batches them (each image encoded
once, gathered per pair); the reference runs the same pairs as a plain batch.
"""

from __future__ import annotations

import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.modeling.detector import Sam3Detector
from tests.devices import least_agreement, widened
from tests.parity.hf_reference import hf_video_model


@pytest.fixture(scope="module")
def models():
    config = Sam3Config.tiny()
    hf = hf_video_model(config).detector_model
    ours = Sam3Detector(config.detector).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return config, hf, ours


def _text_inputs(config, n, gen):
    vocab = config.detector.text_config.vocab_size
    ids = torch.randint(0, vocab - 2, (n, 32), generator=gen)
    lengths = torch.tensor([5, 9, 3, 12][:n])
    mask = torch.arange(32)[None] < lengths[:, None]
    ids[:, 0] = vocab - 2
    ids[torch.arange(n), lengths - 1] = vocab - 1
    ids[~mask] = vocab - 1
    return ids, mask.long()


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


def _mask_iou(a, b):
    a, b = a > 0, b > 0
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double().clamp(min=1)
    return inter / union


def _compare(ref, out):
    assert _rel(out.pred_logits, ref.pred_logits) < widened(1e-4)
    assert _rel(out.presence_logits, ref.presence_logits) < widened(1e-4)
    assert _rel(out.pred_boxes, ref.pred_boxes) < widened(1e-4)
    assert _rel(out.pred_masks, ref.pred_masks) < widened(1e-4)
    assert _mask_iou(out.pred_masks.flatten(0, 1), ref.pred_masks.flatten(0, 1)).min() >= least_agreement(0.99)


@torch.inference_mode()
def test_text_prompts_batched_over_images_and_prompts(models):
    config, hf, ours = models
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, config.image_size, config.image_size, generator=gen)
    ids, mask = _text_inputs(config, 3, gen)
    image_index = torch.tensor([0, 0, 0, 1, 1, 1])
    prompt_index = torch.tensor([0, 1, 2, 0, 1, 2])
    ref = hf(pixel_values=pixels[image_index], input_ids=ids[prompt_index], attention_mask=mask[prompt_index])

    vision = ours.encode_image(pixels)
    text = ours.encode_text(ids, mask)
    out = ours.detect(vision, image_index, text.features[prompt_index], text.mask[prompt_index])
    _compare(ref, out)
    # the score SAM 3 reports
    expected = ref.pred_logits.sigmoid() * ref.presence_logits.sigmoid()
    torch.testing.assert_close(out.scores, expected, rtol=1e-4, atol=1e-6)


@torch.inference_mode()
def test_text_and_box_prompts(models, hf_roi_align):
    config, hf, ours = models
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, config.image_size, config.image_size, generator=gen)
    ids, mask = _text_inputs(config, 2, gen)
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]],
                          [[0.5, 0.5, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -10]])  # -10: the reference's padding label
    ref = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, input_boxes=boxes, input_boxes_labels=labels)

    vision = ours.encode_image(pixels)
    text = ours.encode_text(ids, mask)
    out = ours.detect(vision, torch.tensor([0, 1]), text.features, text.mask, boxes=boxes,
                      box_labels=labels.clamp(min=0), box_mask=labels != -10)
    _compare(ref, out)


@torch.inference_mode()
def test_pairs_without_boxes_match_text_only_in_a_mixed_batch(models, hf_roi_align):
    """A text-only pair batched beside a box-prompted pair gives the text-only result."""
    config, hf, ours = models
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randn(1, 3, config.image_size, config.image_size, generator=gen)
    ids, mask = _text_inputs(config, 2, gen)
    text_only = hf(pixel_values=pixels, input_ids=ids[:1], attention_mask=mask[:1])

    vision = ours.encode_image(pixels)
    text = ours.encode_text(ids, mask)
    boxes = torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[0.5, 0.5, 0.3, 0.3]]])
    out = ours.detect(vision, torch.tensor([0, 0]), text.features, text.mask, boxes=boxes,
                      box_labels=torch.ones(2, 1, dtype=torch.long), box_mask=torch.tensor([[False], [True]]))
    assert _rel(out.pred_logits[:1], text_only.pred_logits) < widened(1e-4)
    assert _rel(out.pred_masks[:1], text_only.pred_masks) < widened(1e-4)
    # and the box really changes the other pair
    assert _rel(out.pred_logits[1:], out.pred_logits[:1]) > 1e-3
