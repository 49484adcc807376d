"""Turning a step's low-resolution mask logits into frame-size output masks, all sessions at once.

The engine hands over one :class:`RenderItem` per session (logits still on the device) and gets
back one :class:`RenderedMasks` each. Everything heavy stays on the device: bilinear upsampling
(chunked, so only a bounded slab of float pixels exists at a time), thresholding into bool, the
non-overlap rule, tight boxes, areas and bit-packing. The host then gets ONE copy per step
(``host_reads.to_host``) of packed masks (8 pixels a byte, ``sam3_runtime.rle.pack_mask``'s
layout), boxes and areas, instead of a bool byte per pixel per session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam3_runtime.host_reads import to_host
from sam3_runtime.masks import masks_to_boxes
from sam3_runtime.rle import packed_size
from sam3_runtime.video.types import FrameResult, TrackedObject

# Float pixels upsampled at once (256 MB in float32): bounds the transient full-resolution logits.
UPSAMPLE_CHUNK_ELEMENTS = 1 << 26
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' big-endian bit order


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
    areas: list[int]  # pixels of each kept mask
    packed: np.ndarray  # [K, ceil(H*W/8)] uint8, one packed mask per kept object
    size: tuple[int, int]  # (H, W)


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
        for k, i in enumerate(masks.kept):
            self.result.objects.append(TrackedObject(
                track_id=int(self.ids[i]), concept=self.concepts[i], score=float(self.scores[i]),
                tracker_score=float(self.tracker_scores[i]), box_xyxy=masks.boxes[k], packed_mask=masks.packed[k],
                mask_size=masks.size, area_px=masks.areas[k], tentative=bool(self.tentative[i]),
            ))
        return self.result


def render_step(items: list[RenderItem], non_overlapping_masks: bool) -> list[RenderedMasks]:
    """Frame-size masks of every item: bilinear upsample, threshold at 0, then (optionally, for items with
    more than one object) give each contested pixel to the object with the highest tracker score of its
    group. Items of one frame size (and logit size) are rendered together; one host read in all."""
    by_shape: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        if item.low_res.shape[0]:
            key = (tuple(item.low_res.shape[1:]), tuple(item.size), item.low_res.dtype, item.low_res.device)
            by_shape.setdefault(key, []).append(i)
    batches = [(members, _render_batch([items[i] for i in members], non_overlapping_masks))
               for members in by_shape.values()]
    host = to_host(*[t for _, tensors in batches for t in tensors]) if batches else []
    out = [_empty(item.size) for item in items]
    for b, (members, _) in enumerate(batches):
        packed, boxes, areas = host[3 * b: 3 * b + 3]
        start = 0
        for i in members:
            m = items[i].low_res.shape[0]
            out[i] = _rendered(packed[start:start + m], boxes[start:start + m], areas[start:start + m], items[i].size)
            start += m
    return out


def _empty(size: tuple[int, int]) -> RenderedMasks:
    return RenderedMasks(kept=[], boxes=[], areas=[], packed=np.zeros((0, packed_size(size)), np.uint8), size=size)


def _rendered(packed: np.ndarray, boxes: np.ndarray, areas: np.ndarray, size: tuple[int, int]) -> RenderedMasks:
    # an object with no pixel left (empty, or every pixel owned by a stronger one) is not reported
    kept = np.flatnonzero(areas > 0)
    return RenderedMasks(kept=kept.tolist(), boxes=[tuple(b) for b in boxes[kept].tolist()],
                         areas=areas[kept].tolist(), packed=packed[kept], size=size)


def _render_batch(items: list[RenderItem], non_overlapping_masks: bool) -> tuple[torch.Tensor, ...]:
    """Packed masks ``[M, B]`` uint8, boxes ``[M, 4]`` float32, areas ``[M]`` int32 of items sharing a size."""
    masks = upsample_threshold(torch.cat([it.low_res for it in items]), items[0].size)
    if non_overlapping_masks:
        device = masks.device
        # objects of one segment compete for pixels: same item and group; items of one object are left alone
        counts = [it.low_res.shape[0] for it in items]
        contested = torch.tensor([c > 1 for c in counts for _ in range(c)], device=device)
        item_index = torch.repeat_interleave(torch.arange(len(items), device=device),
                                             torch.tensor(counts, device=device))
        scores = torch.cat([it.tracker_scores.to(device, torch.float32) for it in items])
        groups = torch.cat([it.groups.to(device, torch.long) for it in items])
        owned = exclusive_owner(masks, scores, item_index * (groups.max() - groups.min() + 1) + groups - groups.min())
        masks = owned if min(counts) > 1 else torch.where(contested[:, None, None], owned, masks)
    packed = pack_bits(masks)
    return packed, masks_to_boxes(masks), packed_areas(packed)


def upsample_threshold(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """bool ``[M, H, W]``: ``low_res [M, h, w]`` logits bilinearly upsampled to ``size`` and thresholded at 0."""
    m = low_res.shape[0]
    out = torch.empty((m, *size), dtype=torch.bool, device=low_res.device)
    step = max(1, UPSAMPLE_CHUNK_ELEMENTS // max(1, size[0] * size[1]))
    for start in range(0, m, step):
        chunk = low_res[start:start + step, None]
        out[start:start + step] = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)[:, 0] > 0
    return out


def exclusive_owner(masks: torch.Tensor, scores: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Each pixel to at most one object of each segment: the one with the highest score, ties to the lowest
    index; an object whose score is not positive owns nothing (``heuristics.non_overlapping`` on bool masks).

    Objects are sorted by (segment, score descending, index); a pixel belongs to the first object of its
    segment that covers it, i.e. to an object none of whose predecessors in the segment covers it. That
    count is a difference of running sums (exclusive cumulative OR as counting), kept in one byte a
    pixel: modulo 256 it is still exact while no segment has more than 256 objects.
    """
    n = masks.shape[0]
    if n == 0:
        return masks
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(segments[order], stable=True).indices]
    seg = segments[order]
    # the sorted position where each object's segment starts
    starts = torch.cat([seg.new_ones(1, dtype=torch.bool), seg[1:] != seg[:-1]])
    positions = torch.arange(n, device=masks.device)
    first = torch.cummax(torch.where(starts, positions, 0), 0).values
    dtype = torch.uint8 if n <= 256 else torch.int32
    sorted_masks = masks[order] & (scores[order] > 0)[:, None, None]
    covers = sorted_masks.view(torch.uint8) if dtype == torch.uint8 else sorted_masks.to(dtype)
    before = torch.cumsum(covers, 0, dtype=dtype) - covers  # covering objects sorted before this one
    # none of them in its own segment: as many as before the segment's first object
    owned = torch.empty_like(masks)
    owned[order] = sorted_masks & (before == before.index_select(0, first))
    return owned


def packed_areas(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[M]``: set bits of each packed mask (a byte-wise popcount table: 8x fewer reads than the bools)."""
    table = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.uint8, device=packed.device)
    return table.index_select(0, packed.flatten().int()).view(packed.shape).sum(1, dtype=torch.int32)


def pack_bits(masks: torch.Tensor) -> torch.Tensor:
    """uint8 ``[M, ceil(H*W/8)]``: each bool ``[H, W]`` mask packed as ``np.packbits`` packs it flattened."""
    m = masks.shape[0]
    flat = masks.reshape(m, -1).to(torch.uint8)
    pad = -flat.shape[1] % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    return (flat.view(m, -1, 8) * weights).sum(-1, dtype=torch.uint8)
