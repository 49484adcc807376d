"""Turning a step's low-resolution mask logits into frame-size output masks, all sessions at once.

The engine hands over one :class:`RenderItem` per session (logits still on the device) and gets
back one :class:`RenderedMasks` each: which objects kept at least one pixel, their tight boxes and
their masks at frame resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam3_runtime.masks import masks_to_boxes
from sam3_runtime.video.heuristics import non_overlapping
from sam3_runtime.video.types import FrameResult, TrackedObject


@dataclass
class RenderItem:
    """One session's objects on this step's frame."""

    low_res: torch.Tensor  # [M, h, w] float mask logits, on the device
    tracker_scores: torch.Tensor  # [M] float32 probabilities: who wins a contested pixel
    groups: torch.Tensor  # [M] int64 concept of each object (-1: prompted); non-overlap holds within a group
    size: tuple[int, int]  # (H, W) of the frame the masks are drawn at


@dataclass
class RenderedMasks:
    """One session's output masks: only objects with at least one pixel, in input order."""

    kept: list[int]  # indices into the item's objects
    boxes: list[tuple[float, float, float, float]]  # tight xyxy box of each kept mask, pixels
    masks: np.ndarray  # [K, H, W] bool


@dataclass
class PendingResult:
    """One session's frame result and per-object fields, waiting for its rendered masks."""

    result: FrameResult
    ids: list[int]
    concepts: list[str]
    scores: list[float]
    tracker_scores: list[float]
    tentative: list[bool]

    def result_with(self, masks: RenderedMasks) -> FrameResult:
        """The result with every object that kept a pixel, in the engine's output order."""
        for k, (i, box) in enumerate(zip(masks.kept, masks.boxes, strict=True)):
            self.result.objects.append(TrackedObject(
                track_id=int(self.ids[i]), concept=self.concepts[i], score=float(self.scores[i]),
                tracker_score=float(self.tracker_scores[i]), box_xyxy=box, mask=masks.masks[k],
                tentative=bool(self.tentative[i]),
            ))
        return self.result


def render_step(items: list[RenderItem], non_overlapping_masks: bool) -> list[RenderedMasks]:
    """Frame-size masks of every item: bilinear upsample, threshold at 0, then (optionally) give each
    contested pixel to the object with the highest tracker score of its group."""
    return [_render_one(item, non_overlapping_masks) for item in items]


def _render_one(item: RenderItem, non_overlapping_masks: bool) -> RenderedMasks:
    h, w = item.size
    if item.low_res.shape[0] == 0:
        return RenderedMasks(kept=[], boxes=[], masks=np.zeros((0, h, w), dtype=bool))
    masks = F.interpolate(item.low_res[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0
    if non_overlapping_masks and masks.shape[0] > 1:
        masks = non_overlapping(masks, item.tracker_scores, item.groups)
    # an object with no pixel left (empty, or every pixel owned by a stronger one) is not reported
    kept = torch.nonzero(masks.flatten(1).any(1)).flatten().tolist()
    boxes = masks_to_boxes(masks).tolist()
    masks_np = masks.cpu().numpy()
    return RenderedMasks(kept=kept, boxes=[tuple(boxes[i]) for i in kept], masks=masks_np[kept])
