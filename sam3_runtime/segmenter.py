"""Image segmentation: many images x many prompts in one batched call.

The backbone runs once per image, the text encoder once per distinct prompt string (cached),
and the detector once per (image, prompt) pair, all pairs in one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sam3_runtime.masks import RLE, encode_rle, mask_nms
from sam3_runtime.model import LoadedModel
from sam3_runtime.preprocess import to_model_input

logger = logging.getLogger(__name__)

# SAM 3 conditions box-only prompts on this text, as its reference processor does.
VISUAL_PROMPT_TEXT = "visual"


@dataclass(frozen=True)
class BoxPrompt:
    """An exemplar box in pixels of the original image; negative boxes say "not like this"."""

    xyxy: tuple[float, float, float, float]
    positive: bool = True


@dataclass(frozen=True)
class Prompt:
    """A text prompt, exemplar boxes, or both (the text then names what the boxes show)."""

    text: str | None = None
    boxes: tuple[BoxPrompt, ...] = ()

    def __post_init__(self) -> None:
        if self.text is not None and not self.text.strip():
            raise ValueError("empty text prompt: give a noun phrase such as 'forklift', or box prompts")
        if self.text is None and not self.boxes:
            raise ValueError("a prompt needs a text, at least one box, or both")

    @property
    def label(self) -> str:
        if self.text is not None:
            return self.text
        return VISUAL_PROMPT_TEXT


@dataclass
class Instance:
    prompt: str
    score: float
    presence: float
    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray  # bool [H, W] at the original resolution
    rle: RLE

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "score": round(self.score, 6),
            "presence": round(self.presence, 6),
            "box_xyxy": [round(v, 2) for v in self.box_xyxy],
            "mask": dict(self.rle),
        }


@dataclass
class ImageResult:
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)


class ImageSegmenter:
    """Runs SAM 3's detector on images for text and box prompts."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype

    @torch.inference_mode()
    def segment(
        self,
        images: list[np.ndarray],
        prompts: list[Prompt],
        threshold: float = 0.5,
        nms_iou: float | None = None,
    ) -> list[ImageResult]:
        """Every prompt on every image. ``images`` are uint8 RGB ``[H, W, 3]`` arrays.

        ``threshold`` applies to score = sigmoid(class logit) x sigmoid(presence logit).
        ``nms_iou`` enables mask NMS per (image, prompt) (off by default, as in SAM 3's image API).
        """
        if not images:
            return []
        if not prompts:
            raise ValueError("no prompts: give at least one text (--prompt) or box (--box)")
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        for p in prompts:
            for (h, w) in sizes:
                for b in p.boxes:
                    _check_box(b, w, h)

        detector = self.model.detector_model
        pixels = to_model_input(images, self.loaded.config.image_size, self.device, self.dtype)
        vision = detector.encode_image(pixels)
        text = self.loaded.text_features([p.label for p in prompts])

        n_img, n_prm = len(images), len(prompts)
        image_index = torch.arange(n_img, device=self.device).repeat_interleave(n_prm)
        prompt_index = torch.arange(n_prm, device=self.device).repeat(n_img)
        boxes, labels, box_mask = _box_tensors(prompts, sizes, self.device, self.dtype)
        out = detector.detect(
            vision,
            image_index=image_index,
            prompt_features=text.features[prompt_index],
            prompt_mask=text.mask[prompt_index],
            boxes=boxes,
            box_labels=labels,
            box_mask=box_mask,
        )
        scores = out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()
        presence = out.presence_logits.float().sigmoid()[:, 0]

        results = [ImageResult(width=w, height=h) for (h, w) in sizes]
        for pair in range(n_img * n_prm):
            i, p = pair // n_prm, pair % n_prm
            keep = torch.nonzero(scores[pair] > threshold).flatten()
            if keep.numel() == 0:
                continue
            h, w = sizes[i]
            probs = F.interpolate(out.pred_masks[pair, keep][None].float().sigmoid(), size=(h, w), mode="bilinear", align_corners=False)[0]
            masks = probs > 0.5
            kept_scores = scores[pair, keep]
            if nms_iou is not None:
                order = mask_nms(masks, kept_scores, nms_iou)
            else:
                order = kept_scores.argsort(descending=True)
            scale = torch.tensor([w, h, w, h], device=self.device)
            # Predicted boxes may reach past the border; report them inside the image.
            boxes_px = (out.pred_boxes[pair, keep].float().clamp(0.0, 1.0) * scale)
            masks_cpu = masks[order].cpu().numpy()
            rles = encode_rle(masks_cpu)
            for j, q in enumerate(order.tolist()):
                results[i].instances.append(
                    Instance(
                        prompt=prompts[p].label,
                        score=float(kept_scores[q]),
                        presence=float(presence[pair]),
                        box_xyxy=tuple(float(v) for v in boxes_px[q]),
                        mask=masks_cpu[j],
                        rle=rles[j],
                    )
                )
        for r in results:
            r.instances.sort(key=lambda inst: -inst.score)
        return results


def _check_box(b: BoxPrompt, w: int, h: int) -> None:
    x0, y0, x1, y1 = b.xyxy
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {list(b.xyxy)} has no area: give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ValueError(f"box {list(b.xyxy)} lies outside the {w}x{h} image: coordinates are pixels, 0 <= x <= {w}, 0 <= y <= {h}")


def _box_tensors(prompts: list[Prompt], sizes: list[tuple[int, int]], device, dtype):
    """Per (image, prompt) pair: boxes as normalised cxcywh ``[N, K, 4]``, labels and validity ``[N, K]``.

    Returns ``(None, None, None)`` when no prompt has boxes, so text-only batches skip the
    geometry encoder as the reference model does.
    """
    k = max(len(p.boxes) for p in prompts)
    if k == 0:
        return None, None, None
    n = len(sizes) * len(prompts)
    boxes = torch.zeros(n, k, 4)
    labels = torch.zeros(n, k, dtype=torch.long)
    valid = torch.zeros(n, k, dtype=torch.bool)
    pair = 0
    for (h, w) in sizes:
        for p in prompts:
            for j, b in enumerate(p.boxes):
                x0, y0, x1, y1 = b.xyxy
                boxes[pair, j] = torch.tensor([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
                labels[pair, j] = int(b.positive)
                valid[pair, j] = True
            pair += 1
    return boxes.to(device, dtype), labels.to(device), valid.to(device)
