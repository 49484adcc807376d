"""Mask utilities: COCO RLE, boxes from masks, IoU and mask NMS.

RLE lives in the torch-free ``sam3_runtime.rle`` (stream-side code reads masks there); this
module re-exports it and also takes torch tensors. NMS and IoU are plain torch on the model's
device (no compiled kernels to fetch).
"""

from __future__ import annotations

import numpy as np
import torch

from sam3_runtime.rle import RLE, decode_rle
from sam3_runtime.rle import encode_rle as _encode_rle

__all__ = ["RLE", "decode_rle", "encode_rle", "mask_iou", "mask_nms", "masks_to_boxes"]


def encode_rle(masks: torch.Tensor | np.ndarray) -> list[RLE]:
    """COCO compressed RLE of boolean masks ``[N, H, W]`` (``counts`` as a str, JSON-ready)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().to("cpu", torch.bool).numpy()
    return _encode_rle(masks)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``[N, 4]`` (pixel edges, exclusive max) of boolean masks; empty masks give zeros."""
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    big = torch.iinfo(torch.long).max
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~rows.any(dim=1)
    boxes[empty] = 0.0
    return boxes


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` of boolean masks ``a [N, H, W]`` and ``b [M, H, W]``."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None, :] - inter
    return inter / union.clamp(min=1.0)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on masks: indices of kept masks, highest score first.

    A mask is suppressed when its IoU with a higher-scoring kept mask exceeds the threshold.
    The IoU matrix is computed once on the device; the greedy pass is a short loop over N.
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    order = scores.argsort(descending=True)
    iou = mask_iou(masks[order], masks[order]).cpu()
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]
