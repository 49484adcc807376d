"""The image segmentation API against transformers' SAM 3 on the same weights and pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3_runtime.masks import decode_rle
from sam3_runtime.model import load_model, write_random_checkpoint
from sam3_runtime.preprocess import to_model_input
from sam3_runtime.segmenter import BoxPrompt, ImageSegmenter, Prompt
from tests.parity.hf_reference import hf_video_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam3-tiny")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def reference(loaded):
    from transformers import Sam3VideoModel

    hf = Sam3VideoModel(hf_video_config(loaded.config)).eval().detector_model
    hf.load_state_dict(loaded.model.detector_model.state_dict(), strict=True)
    return hf


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), rng.integers(0, 256, (120, 80, 3), dtype=np.uint8)]


@torch.inference_mode()
def _reference_instances(loaded, hf, image, prompt, threshold):
    """What transformers' post-processing makes of its detector output on the same pixels."""
    h, w = image.shape[:2]
    pixels = to_model_input([image], loaded.config.image_size, "cpu", torch.float32)
    ids, mask = loaded.tokenizer.encode([prompt])
    out = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
    keep = scores[0] > threshold
    masks = F.interpolate(out.pred_masks[0, keep][None].sigmoid(), size=(h, w), mode="bilinear", align_corners=False)[0] > 0.5
    boxes = out.pred_boxes[0, keep].clamp(0, 1) * torch.tensor([w, h, w, h])
    order = scores[0, keep].argsort(descending=True)
    return scores[0, keep][order], boxes[order], masks[order]


def test_matches_reference_on_every_image_and_prompt(loaded, reference):
    images = _images()
    prompts = ["car", "a red truck"]
    threshold = 0.2
    results = ImageSegmenter(loaded).segment(images, [Prompt(p) for p in prompts], threshold=threshold)
    assert [(r.height, r.width) for r in results] == [(90, 130), (120, 80)]
    for image, result in zip(images, results, strict=True):
        for prompt in prompts:
            ours = [i for i in result.instances if i.prompt == prompt]
            scores, boxes, masks = _reference_instances(loaded, reference, image, prompt, threshold)
            assert len(ours) == len(scores) > 0
            np.testing.assert_allclose([i.score for i in ours], scores.numpy(), rtol=1e-4)
            np.testing.assert_allclose([i.box_xyxy for i in ours], boxes.numpy(), rtol=1e-4, atol=1e-3)
            for inst, ref_mask in zip(ours, masks, strict=True):
                assert inst.mask.shape == image.shape[:2]
                inter = (inst.mask & ref_mask.numpy()).sum()
                union = (inst.mask | ref_mask.numpy()).sum()
                assert inter / max(union, 1) >= 0.99
                np.testing.assert_array_equal(decode_rle([inst.rle])[0], inst.mask)


def test_batched_call_equals_one_call_per_image_and_prompt(loaded):
    images = _images()
    seg = ImageSegmenter(loaded)
    prompts = [Prompt("car"), Prompt("tree", boxes=(BoxPrompt((10, 10, 50, 60)),))]
    batched = seg.segment(images, prompts, threshold=0.2)
    for image, result in zip(images, batched, strict=True):
        alone = [inst for p in prompts for inst in seg.segment([image], [p], threshold=0.2)[0].instances]
        alone.sort(key=lambda i: -i.score)
        assert [i.prompt for i in result.instances] == [i.prompt for i in alone]
        np.testing.assert_allclose([i.score for i in result.instances], [i.score for i in alone], rtol=1e-4)


def test_text_is_encoded_once_per_prompt(loaded):
    seg = ImageSegmenter(loaded)
    loaded.text_cache.clear()
    misses = loaded.text_cache.misses
    seg.segment(_images(), [Prompt("forklift"), Prompt("person without a helmet")], threshold=0.9)
    seg.segment(_images(), [Prompt("forklift")], threshold=0.9)
    assert loaded.text_cache.misses - misses == 2


def test_mask_nms_removes_overlapping_instances(loaded):
    seg = ImageSegmenter(loaded)
    [plain] = seg.segment(_images()[:1], [Prompt("car")], threshold=0.2)
    [nms] = seg.segment(_images()[:1], [Prompt("car")], threshold=0.2, nms_iou=0.5)
    assert 0 < len(nms.instances) < len(plain.instances)
    kept = np.stack([i.mask for i in nms.instances]).reshape(len(nms.instances), -1)
    inter = kept.astype(np.float64) @ kept.T.astype(np.float64)
    area = kept.sum(1)
    iou = inter / (area[:, None] + area[None] - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (lambda: Prompt("   "), "empty text prompt"),
        (lambda: Prompt(), "needs a text"),
    ],
)
def test_bad_prompts_say_what_to_do(prompt, message):
    with pytest.raises(ValueError, match=message):
        prompt()


def test_boxes_outside_the_image_or_without_area_are_refused(loaded):
    seg = ImageSegmenter(loaded)
    image = _images()[:1]
    with pytest.raises(ValueError, match="outside the 130x90 image"):
        seg.segment(image, [Prompt(boxes=(BoxPrompt((10, 10, 200, 50)),))])
    with pytest.raises(ValueError, match="no area"):
        seg.segment(image, [Prompt(boxes=(BoxPrompt((10, 10, 10, 50)),))])
