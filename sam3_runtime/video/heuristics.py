"""Mask-level building blocks of SAM 3's video heuristics, batched over objects.

Everything here is a pure function over tensors: detection filtering (score threshold and
mask NMS), detection-to-track association, occlusion-based overlap suppression, the two
non-overlap rules, and hole filling. ``planning.plan_frame`` strings them together into the
per-frame decisions; the engine calls ``filter_detections`` (and optionally ``fill_holes``)
itself.

Offline behaviour of the reference. transformers' ``Sam3VideoModel`` runs mask NMS and hole
filling through a kernel it fetches from the hub (``kernels-community/cv-utils``); without the
``kernels`` package or network it logs a warning and silently skips both: NMS keeps every
detection above the score threshold and ``fill_holes_in_mask_scores`` returns its input. The
official model runs both. So NMS is on by default here (``nms=True``, as the official model)
and ``nms=False`` mirrors offline transformers; hole filling is a separate function that the
engine applies only when asked (off for parity).

Conventions: masks are logits ``[N, H, W]`` (foreground = ``> 0``) in any float dtype; IoUs
are computed on the binarised masks, in fp32 (exact integer counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam3_runtime.config import VideoConfig
from sam3_runtime.host_reads import to_host
from sam3_runtime.masks import mask_iou

# Logit that marks a pixel (or a whole mask) as background; sigmoid(-10) ~ 4.5e-5.
NO_OBJ_LOGIT = -10.0


@dataclass(frozen=True)
class Detections:
    """Detections of one frame that passed thresholding and NMS, all concepts concatenated.

    Rows are ordered by prompt, then by query index (the order transformers merges them in).
    """

    masks: torch.Tensor  # [D, H, W] mask logits
    scores: torch.Tensor  # [D] float32 probabilities
    prompt_ids: torch.Tensor  # [D] int64 concept id of each detection
    query_indices: torch.Tensor  # [D] int64 detector query that produced it
    boxes: torch.Tensor | None = None  # [D, 4] when boxes were given


def filter_detections(
    masks: torch.Tensor,
    scores: torch.Tensor,
    cfg: VideoConfig,
    *,
    prompt_ids: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    nms: bool = True,
) -> Detections:
    """Keep detections scoring above ``score_threshold_detection``, then mask-NMS each concept.

    masks ``[P, Q, H, W]`` logits and scores ``[P, Q]`` probabilities for P concepts x Q queries;
    ``prompt_ids [P]`` names the concepts (default ``0..P-1``). NMS runs independently per
    concept, greedy by descending score, suppressing IoU ``> det_nms_thresh``; it is skipped when
    ``nms`` is False (transformers without its kernels) or the threshold is <= 0. The engine runs
    the same rules for all streams at once (``detect_batch.select_detections``, which this calls).
    """
    from sam3_runtime.video.detect_batch import select_detections  # it builds on this module's types

    num_prompts = scores.shape[0]
    if prompt_ids is None:
        prompt_ids = torch.arange(num_prompts)
    batch = select_detections(
        masks, scores, np.zeros(num_prompts, dtype=np.int64), prompt_ids.cpu().long().numpy(),
        np.array([cfg.score_threshold_detection]), np.array([cfg.det_nms_thresh], np.float32) if nms else None,
    )
    (valid,) = to_host(batch.valid)
    rows = np.flatnonzero(valid)
    p_idx = torch.from_numpy(batch.pair_index[rows]).to(scores.device)
    q_idx = torch.from_numpy(batch.query_index[rows]).to(scores.device)
    return Detections(
        masks=masks[p_idx, q_idx],
        scores=scores[p_idx, q_idx].float(),
        prompt_ids=prompt_ids.to(scores.device, torch.long)[p_idx],
        query_indices=q_idx,
        boxes=None if boxes is None else boxes[p_idx, q_idx],
    )


@dataclass(frozen=True)
class Association:
    """How this frame's detections relate to the tracked objects (D detections, N tracks)."""

    ious: torch.Tensor  # [D, N] float32 mask IoU, zero across concepts
    matched: torch.Tensor  # [D, N] bool: IoU >= assoc_iou_thresh (many tracks per detection allowed)
    is_new: torch.Tensor  # [D] bool: starts a new object
    trk_unmatched: torch.Tensor  # [N] bool: non-empty track without a detection at IoU >= trk_assoc_iou_thresh
    trk_empty: torch.Tensor  # [N] bool: track mask has no foreground pixel
    recondition_det: torch.Tensor  # [N] int64: detection confirming the track with high score and IoU, -1 if none


def associate(
    det_masks: torch.Tensor,
    det_scores: torch.Tensor,
    det_prompt_ids: torch.Tensor,
    trk_masks: torch.Tensor,
    trk_prompt_ids: torch.Tensor,
    cfg: VideoConfig,
) -> Association:
    """Match detections ``[D, H, W]`` to tracker masks ``[N, H, W]`` (logits) by mask IoU.

    A detection is new when its score reaches ``new_det_thresh`` and it overlaps no track of its
    concept at ``assoc_iou_thresh``; with no track at all, every given detection is new (the
    reference does not apply ``new_det_thresh`` then). A track is unmatched when it is non-empty
    and no detection reaches ``trk_assoc_iou_thresh`` with it. For re-conditioning, each
    confident (``high_conf_thresh``), non-new detection whose best IoU reaches ``high_iou_thresh``
    points at its best track (first on ties); when several point at one track the last wins.
    """
    device = det_masks.device
    num_det, num_trk = det_masks.shape[0], trk_masks.shape[0]
    trk_binary = trk_masks > 0
    trk_empty = ~trk_binary.flatten(1).any(dim=1)
    if num_trk == 0 or num_det == 0:
        return Association(
            ious=torch.zeros(num_det, num_trk, device=device),
            matched=torch.zeros(num_det, num_trk, dtype=torch.bool, device=device),
            is_new=torch.full((num_det,), num_trk == 0, dtype=torch.bool, device=device),
            trk_unmatched=~trk_empty,
            trk_empty=trk_empty,
            recondition_det=torch.full((num_trk,), -1, dtype=torch.long, device=device),
        )
    ious = mask_iou(det_masks > 0, trk_binary)
    ious = torch.where(det_prompt_ids[:, None] == trk_prompt_ids[None, :], ious, torch.zeros_like(ious))
    det_scores = det_scores.float()
    matched = ious >= cfg.assoc_iou_thresh
    is_new = (det_scores >= cfg.new_det_thresh) & ~matched.any(dim=1)
    trk_unmatched = ~trk_empty & ~(ious >= cfg.trk_assoc_iou_thresh).any(dim=0)

    best_iou, best_trk = ious.max(dim=1)
    confident = (det_scores >= cfg.high_conf_thresh) & ~is_new & (best_iou >= cfg.high_iou_thresh)
    points_at = confident[:, None] & (best_trk[:, None] == torch.arange(num_trk, device=device))
    det_index = torch.arange(num_det, device=device)[:, None].expand(num_det, num_trk)
    recondition_det = torch.where(points_at, det_index, -1).amax(dim=0)
    return Association(ious, matched, is_new, trk_unmatched, trk_empty, recondition_det)


def occlusion_suppression(
    masks: torch.Tensor, last_occluded: torch.Tensor, prompt_ids: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Objects ``[N]`` (bool) to blank this frame because they overlap a longer-visible object.

    For every same-concept pair with IoU >= ``iou_threshold``, the one occluded more recently
    (larger ``last_occluded`` frame) is suppressed, but only if the other one has itself been
    occluded at some point (``last_occluded > -1``); never-occluded objects suppress nobody.
    """
    binary = masks > 0
    n = binary.shape[0]
    if n <= 1:
        return torch.zeros(n, dtype=torch.bool, device=masks.device)
    pairs = (mask_iou(binary, binary) >= iou_threshold).triu(1) & (prompt_ids[:, None] == prompt_ids[None, :])
    occ_i, occ_j = last_occluded[:, None], last_occluded[None, :]
    suppress_i = pairs & (occ_i > occ_j) & (occ_j > -1)
    suppress_j = pairs & (occ_j > occ_i) & (occ_i > -1)
    return suppress_i.any(dim=1) | suppress_j.any(dim=0)


def _group_index(prompt_ids: torch.Tensor) -> torch.Tensor:
    """``[N]`` index of the first object of each object's concept: a group id below N, found
    on the device (no ``unique``, which would wait for it to size its output)."""
    same = prompt_ids[:, None] == prompt_ids[None, :]
    return same.int().argmax(dim=1)


def _group_winner(values: torch.Tensor, prompt_ids: torch.Tensor | None) -> torch.Tensor:
    """``[N, H, W]`` bool: object i holds the largest value of its concept at that pixel.

    Ties go to the lowest object index (argmax semantics), so exactly one object per concept
    wins each pixel. ``prompt_ids`` only need to compare equal within a concept (any int64 key).
    """
    n = values.shape[0]
    obj_index = torch.arange(n, device=values.device)[:, None, None]
    if prompt_ids is None:
        return values.argmax(dim=0, keepdim=True) == obj_index
    group = _group_index(prompt_ids.to(values.device))
    # a materialised index: CPU scatter_reduce is orders of magnitude slower on a stride-0 one
    index = group[:, None, None].expand_as(values).contiguous()
    group_max = values.new_empty(values.shape).scatter_reduce(0, index, values, "amax", include_self=False)
    at_max = values == group_max.index_select(0, group)
    candidate = torch.where(at_max, obj_index, n)
    first = torch.full(values.shape, n, dtype=torch.long, device=values.device)
    first = first.scatter_reduce(0, index, candidate, "amin", include_self=True)
    return first.index_select(0, group) == obj_index


def pixel_non_overlapping(masks: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Keep each pixel only in the object with the largest mask logit (per concept).

    Losing objects get their logits clamped to at most -10. This is the rule transformers
    applies before memory encoding (ranked by pixel logit, not by object score).
    """
    if masks.shape[0] <= 1:
        return masks
    keep = _group_winner(masks, prompt_ids)
    return torch.where(keep, masks, masks.clamp(max=NO_OBJ_LOGIT))


def suppress_shrunk_masks(
    masks: torch.Tensor, prompt_ids: torch.Tensor | None = None, shrink_threshold: float = 0.3
) -> torch.Tensor:
    """Blank (clamp to <= -10) whole objects that would keep less than ``shrink_threshold`` of
    their area under ``pixel_non_overlapping``; the others are returned unchanged.

    Used on the masks about to be encoded into the tracker's memory. An object alone in its
    concept is left untouched, even when empty (as in the reference).
    """
    if masks.shape[0] <= 1:
        return masks
    foreground = masks > 0
    area_before = foreground.flatten(1).sum(dim=1).clamp(min=1).float()
    area_after = (foreground & _group_winner(masks, prompt_ids)).flatten(1).sum(dim=1).float()
    keep = area_after / area_before >= shrink_threshold
    if prompt_ids is not None:
        prompt_ids = prompt_ids.to(keep.device)
        keep |= (prompt_ids[:, None] == prompt_ids[None, :]).sum(dim=1) == 1
    return torch.where(keep[:, None, None], masks, masks.clamp(max=NO_OBJ_LOGIT))


def non_overlapping(
    masks: torch.Tensor,
    scores: torch.Tensor,
    prompt_ids: torch.Tensor | None = None,
    background: float = NO_OBJ_LOGIT,
) -> torch.Tensor:
    """Give each contested pixel to the highest-scoring object (per concept); others lose it.

    The output rule of transformers' video post-processing: ``scores [N]`` are per-object
    probabilities (the tracker's object score, the detection score for objects created this
    frame); ties go to the lowest index. Losing pixels are clamped to at most ``background``.
    Boolean masks return boolean masks (the rule applied to video-resolution binary masks).
    """
    if masks.shape[0] == 0:
        return masks
    score_map = torch.where(masks > 0, scores.to(masks.device, torch.float32)[:, None, None], float(background))
    winner = _group_winner(score_map, prompt_ids)
    owns = torch.where(winner, score_map, score_map.clamp(max=NO_OBJ_LOGIT)) > 0
    if masks.dtype == torch.bool:
        return masks & owns
    return torch.where(owns, masks, masks.clamp(max=background))


def small_component_areas(binary: torch.Tensor, max_area: int) -> torch.Tensor:
    """Areas (int64 ``[N, H, W]``) of the 8-connected components of ``binary`` that have at most
    ``max_area`` pixels; pixels of larger components get ``max_area + 1``, off-mask pixels 0.

    Runs a fixed ``max_area - 1`` rounds of min-label propagation, so it never waits for the
    device to test convergence: a component of at most ``max_area`` pixels has a diameter of at
    most ``max_area - 1`` hops and is fully labelled by then. A label group with a neighbouring
    pixel of another label is part of a component that did not converge, hence a larger one.
    """
    n, h, w = binary.shape
    if h * w >= 2**24:
        raise ValueError("small_component_areas: masks above 2^24 pixels do not fit fp32 labels")
    big = float(h * w + 1)
    pixel_label = torch.arange(1, h * w + 1, device=binary.device, dtype=torch.float32).view(1, h, w)
    labels = torch.where(binary, pixel_label, big)
    for _ in range(max(max_area - 1, 0)):
        neighbour_min = -F.max_pool2d(-labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
        labels = torch.where(binary, torch.minimum(labels, neighbour_min), big)
    # a pixel whose in-mask neighbours carry another label marks its group as unconverged
    low = -F.max_pool2d(-labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    high = F.max_pool2d(torch.where(binary, labels, 0.0)[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    conflict = (binary & ((low != labels) | (high != labels))).flatten(1).long()
    flat = torch.where(binary, labels.long(), 0).flatten(1)
    counts = torch.zeros(n, h * w + 1, dtype=torch.long, device=binary.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    open_group = torch.zeros_like(counts).scatter_reduce_(1, flat, conflict, "amax")
    counts = torch.where(open_group > 0, max_area + 1, counts.clamp(max=max_area + 1))
    counts[:, 0] = 0
    return counts.gather(1, flat).view(n, h, w)


def fill_holes(
    masks: torch.Tensor, max_area: int, *, fill_holes: bool = True, remove_sprinkles: bool = True
) -> torch.Tensor:
    """Fill small background holes and drop small foreground specks of mask logits ``[N, H, W]``.

    Background components of at most ``max_area`` pixels become foreground (logit 0.1); then
    foreground components of at most ``min(max_area, mask area // 2)`` pixels become background
    (logit -0.1), so tiny objects are not erased. Both use 8-connectivity. This is what the
    official model does to tracker masks and new detections; transformers skips it offline.
    Only components up to ``max_area`` pixels matter, so their areas come from
    ``small_component_areas`` (a fixed number of rounds, no host sync).
    """
    if max_area <= 0 or masks.shape[0] == 0:
        return masks
    if fill_holes:
        background = masks <= 0
        areas = small_component_areas(background, max_area)
        masks = torch.where(background & (areas <= max_area), torch.full_like(masks, 0.1), masks)
    if remove_sprinkles:
        foreground = masks > 0
        limit = (foreground.flatten(1).sum(dim=1) // 2).clamp(max=max_area)
        areas = small_component_areas(foreground, max_area)
        masks = torch.where(foreground & (areas <= limit[:, None, None]), torch.full_like(masks, -0.1), masks)
    return masks
