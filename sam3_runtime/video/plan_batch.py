"""``plan_frames``: SAM 3's per-frame video logic for every session of a step in one batched pass.

The rules are those of ``planning.plan_frame`` (see its module docstring); this is how they run.
All sessions' tracks and detections are concatenated. Where the rules compare concepts they
compare a *group* key ``(session, concept)`` instead, so IoUs across sessions count as zero,
occlusion and non-overlap stay within a session's concept, and duplicate counts are block
diagonal (kept as the flattened blocks). Frame indices are per-row tensors.

Host syncs: the device works on the whole batch, then ONE ``to_host`` read brings back every
per-object decision and counter (a few numbers per object and detection, never masks). The
host then makes the decisions that change row counts (``max_num_objects``, new ids, which rows
go) and splits the batch back into per-session tables and plans; masks are gathered on the
device with host-made indices (uploads only, which do not wait for the device).

Masklet tables stay on the host (``MaskletTable`` holds CPU tensors): they are a few numbers
per object, travel to the device in two packed uploads per step and come back in the read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.host_reads import to_host
from sam3_runtime.masks import mask_iou
from sam3_runtime.video.heuristics import NO_OBJ_LOGIT, fill_holes, occlusion_suppression, suppress_shrunk_masks
from sam3_runtime.video.memory import _to_device
from sam3_runtime.video.plan_types import ALWAYS_OCCLUDED, NEVER_OCCLUDED, NOT_SEEN, FramePlan, MaskletTable

logger = logging.getLogger(__name__)

GROUP_SHIFT = 1 << 32  # group key = session * GROUP_SHIFT + prompt id


@dataclass(frozen=True)
class SessionFrame:
    """One session's part of a batch: its table, frame, heuristics and detections (host copies).

    Its detections are ``num_dets`` consecutive rows of the batch's detections (sessions in order).
    """

    table: MaskletTable
    frame_idx: int
    cfg: VideoConfig
    det_prompt_ids: np.ndarray  # [D] int64
    det_scores: np.ndarray  # [D] float32, the same values as the device's

    @property
    def num_dets(self) -> int:
        return int(self.det_prompt_ids.shape[0])


@dataclass(frozen=True)
class BatchPlan:
    """``plan_frames``'s result: per session its plan and next table, plus batch-wide indices
    the engine executes the plans with (global rows: sessions' rows concatenated)."""

    plans: list[FramePlan]
    tables: list[MaskletTable]
    keep_rows: np.ndarray  # [N'] global old rows that survive, sessions in order
    new_dets: np.ndarray  # [K] global detection rows that start objects, sessions in order
    recondition: np.ndarray  # [N] bool: this frame's memory of the row is a conditioning frame
    memory_masks: torch.Tensor  # [N, H, W] masks to encode (all old rows)
    memory_score_logits: torch.Tensor  # [N]


def shared_settings(cfg: VideoConfig) -> VideoConfig:
    """The part of ``cfg`` that sessions planned in one batch must share (the two detection
    thresholds may differ per session)."""
    return dataclasses.replace(cfg, score_threshold_detection=0.0, new_det_thresh=0.0)


def plan_frames(
    frames: Sequence[SessionFrame],
    det_masks: torch.Tensor,
    det_valid: torch.Tensor,
    trk_masks: torch.Tensor,
    trk_scores: torch.Tensor,
    *,
    hotstart_mode: str = "tentative",
    fill_hole_masks: bool = False,
    evict_after_frames: int | None = None,
) -> BatchPlan:
    """Plan one frame of every session in ``frames`` (one host read).

    det_masks ``[V, H, W]`` logits of every session's candidate detections (``det_valid [V]``:
    those that survived NMS; the others are ignored); trk_masks ``[N, H, W]`` logits and
    trk_scores ``[N]`` object-score logits of every table row, sessions in order.
    """
    if hotstart_mode not in ("tentative", "off"):
        raise ValueError(f"hotstart_mode must be 'tentative' or 'off', got {hotstart_mode!r}")
    if evict_after_frames is not None and evict_after_frames < 1:
        raise ValueError(f"evict_after_frames must be >= 1 or None, got {evict_after_frames}")
    cfg = frames[0].cfg
    if any(shared_settings(f.cfg) != shared_settings(cfg) for f in frames):
        raise ValueError("sessions planned together must share their video settings except the detection thresholds")
    n_rows = np.array([len(f.table) for f in frames], dtype=np.int64)
    n_dets = np.array([f.num_dets for f in frames], dtype=np.int64)
    n, v = int(n_rows.sum()), int(n_dets.sum())
    if trk_masks.shape[0] != n or trk_scores.numel() != n:
        raise ValueError(f"{n} tracked objects but trk_masks {tuple(trk_masks.shape)}, trk_scores {tuple(trk_scores.shape)}")
    device = trk_masks.device
    host = _HostBatch.build(frames, n_rows, n_dets)
    if n == 0 and v == 0:  # nothing tracked or detected (e.g. prompted objects only): no device work, no read
        none = _Read(*[np.zeros(0, np.int64)] * 6, np.zeros(0, np.float32), *[np.zeros(0, bool)] * 7)
        return _split(frames, host, none, trk_masks, trk_masks, trk_masks, trk_scores.reshape(-1), det_masks,
                      hotstart_mode == "tentative", fill_hole_masks, make_room=False)
    trk_scores = trk_scores.reshape(-1).float()
    if fill_hole_masks:
        trk_masks = fill_holes(trk_masks, cfg.fill_hole_area)
    ints = _to_device(host.ints, device).split(host.int_sizes)
    key, first_frame, keep_alive, unmatched, last_occluded, absent, frame, det_key, blk_src, blk_row, blk_col, dup = ints
    det_new_thresh = _to_device(host.det_new_thresh, device)
    det_scores = _to_device(np.concatenate([f.det_scores for f in frames]).astype(np.float32), device)

    # -- association (IoU zero across groups) ---------------------------------------------------
    trk_binary = trk_masks > 0
    trk_empty = ~trk_binary.flatten(1).any(dim=1)
    same = (det_key[:, None] == key[None, :]) & det_valid[:, None]
    if n and v:
        ious = torch.where(same, mask_iou(det_masks > 0, trk_binary), 0.0)
    else:
        ious = trk_masks.new_zeros(v, n, dtype=torch.float32)
    matched = (ious >= cfg.assoc_iou_thresh) & same
    # a session without tracks starts every detection it has (no new_det_thresh), as the reference
    is_new = det_valid & ((det_scores >= det_new_thresh) & ~matched.any(dim=1) | _to_device(host.det_alone, device))
    trk_unmatched = ~trk_empty & ~((ious >= cfg.trk_assoc_iou_thresh) & same).any(dim=0)
    recondition_det = _recondition_targets(ious, det_scores, is_new, cfg)

    # -- keep-alive and hot-start counters ------------------------------------------------------
    keep_alive = torch.where(matched.any(dim=0), (keep_alive + 1).clamp(max=cfg.max_trk_keep_alive), keep_alive)
    keep_alive = torch.where(trk_unmatched, (keep_alive - 1).clamp(min=cfg.min_trk_keep_alive), keep_alive)
    if cfg.decrease_trk_keep_alive_for_empty_masklets:
        keep_alive = torch.where(trk_empty, (keep_alive - 1).clamp(min=cfg.min_trk_keep_alive), keep_alive)
    unmatched = unmatched + trk_unmatched.long()
    dup = dup + _duplicate_events(matched, first_frame).flatten()[blk_src]

    # -- hot-start retraction and keep-alive hiding ---------------------------------------------
    young = first_frame > frame - cfg.hotstart_delay
    removed = torch.zeros(n, dtype=torch.bool, device=device)
    hidden = torch.zeros(n, dtype=torch.bool, device=device)
    if hotstart_mode == "tentative":
        ever_unmatched = unmatched > 0
        too_unmatched = ever_unmatched & (unmatched >= cfg.hotstart_unmatch_thresh)
        dup_hit = ((dup > 0) & (dup >= cfg.hotstart_dup_thresh)).long()
        duplicate = torch.zeros(n, dtype=torch.long, device=device).scatter_reduce(0, blk_col, dup_hit, "amax") > 0
        removed = young & (too_unmatched | duplicate)
        if not cfg.suppress_unmatched_only_within_hotstart:
            # the reference checks this before its duplicate rule, so only unmatched-retracted objects are exempt
            hidden = ever_unmatched & (keep_alive <= 0) & ~(young & too_unmatched)

    # -- periodic re-conditioning from confident detections ---------------------------------------
    recondition = torch.zeros(n, dtype=torch.bool, device=device)
    if cfg.recondition_every_nth_frame > 0:
        due = frame % cfg.recondition_every_nth_frame == 0
        # the reference compares the tracker's object-score logit with high_conf_thresh
        recondition = due & (recondition_det >= 0) & (trk_scores > cfg.high_conf_thresh)

    # -- occlusion-based overlap suppression (within each group) ----------------------------------
    suppressed = torch.zeros(n, dtype=torch.bool, device=device)
    threshold = cfg.suppress_overlapping_based_on_recent_occlusion_threshold
    if n > 0 and threshold > 0.0:
        default = torch.where(removed, ALWAYS_OCCLUDED, NEVER_OCCLUDED)
        last_prev = torch.where(last_occluded != NOT_SEEN, last_occluded, default)
        suppressed = occlusion_suppression(trk_masks, last_prev, key, threshold)
        last_occluded = torch.where(trk_empty | suppressed, frame, last_prev)
    else:
        last_occluded = torch.full_like(last_occluded, NOT_SEEN)
    track_masks = torch.where(suppressed[:, None, None], torch.full_like(trk_masks, NO_OBJ_LOGIT), trk_masks)

    # -- eviction of objects long absent from the output ------------------------------------------
    absent = torch.where(trk_empty | hidden | suppressed, absent + 1, torch.zeros_like(absent))
    evicted = torch.zeros(n, dtype=torch.bool, device=device)
    if evict_after_frames is not None:
        evicted = (absent >= evict_after_frames) & ~removed

    # -- masks to encode into memory, and this frame's output masks of old rows ----------------------
    det_of_row = det_masks[recondition_det.clamp(min=0)] if v else track_masks
    memory_masks = track_masks
    if not cfg.recondition_on_trk_masks and v:
        memory_masks = torch.where(recondition[:, None, None], (det_of_row >= 0.5).to(track_masks.dtype), track_masks)
    memory_masks = suppress_shrunk_masks(memory_masks, key)
    memory_score_logits = torch.where((memory_masks > 0).flatten(1).any(dim=1), 10.0, -10.0)
    out_old = torch.where(recondition[:, None, None], det_of_row.to(track_masks.dtype), track_masks) if v else track_masks

    read = _Read(*to_host(keep_alive, unmatched, last_occluded, absent, recondition_det, dup, trk_scores.sigmoid(),
                          removed, evicted, hidden, recondition, suppressed, det_valid, is_new))
    return _split(frames, host, read, out_old, track_masks, memory_masks, memory_score_logits, det_masks,
                  hotstart_mode == "tentative", fill_hole_masks, make_room=evict_after_frames is not None)


def _recondition_targets(ious, det_scores, is_new, cfg: VideoConfig) -> torch.Tensor:
    """``[N]`` detection confirming each track with high score and IoU (the last one wins), -1 if none."""
    num_det, num_trk = ious.shape
    if num_det == 0 or num_trk == 0:
        return torch.full((num_trk,), -1, dtype=torch.long, device=ious.device)
    best_iou, best_trk = ious.max(dim=1)
    confident = (det_scores >= cfg.high_conf_thresh) & ~is_new & (best_iou >= cfg.high_iou_thresh)
    points_at = confident[:, None] & (best_trk[:, None] == torch.arange(num_trk, device=ious.device))
    det_index = torch.arange(num_det, device=ious.device)[:, None].expand(num_det, num_trk)
    return torch.where(points_at, det_index, -1).amax(dim=0)


def _duplicate_events(matched: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` counts of this frame's "j duplicates older i" events (zero across groups, as
    a detection matches tracks of its own group only).

    For every detection matched to two or more tracks, the track that appeared first (lowest
    row on ties) is the original and each other matched track is counted as its duplicate once.
    """
    num_det, num_trk = matched.shape
    if num_det == 0 or num_trk == 0:
        return torch.zeros(num_trk, num_trk, dtype=torch.long, device=matched.device)
    age_key = torch.where(matched, first_frame[None, :], torch.iinfo(torch.long).max)
    # a comparison, not one_hot: one_hot checks its input's range on the host
    original = (age_key.argmin(dim=1)[:, None] == torch.arange(num_trk, device=matched.device)) & matched
    duplicates = matched & ~original
    # float matmul (exact for counts below 2^24): integer matmul does not exist on every device
    return (original.float().T @ duplicates.float()).round().long()


@dataclass(frozen=True)
class _Read:
    keep_alive: np.ndarray
    unmatched: np.ndarray
    last_occluded: np.ndarray
    absent: np.ndarray
    recondition_det: np.ndarray
    dup: np.ndarray
    tracker_score: np.ndarray
    removed: np.ndarray
    evicted: np.ndarray
    hidden: np.ndarray
    recondition: np.ndarray
    suppressed: np.ndarray
    det_valid: np.ndarray
    is_new: np.ndarray


@dataclass(frozen=True)
class _HostBatch:
    """Host-side layout of a batch: row / detection / duplicate-block offsets and the packed upload."""

    row_start: np.ndarray
    det_start: np.ndarray
    blk_start: np.ndarray
    ints: np.ndarray
    int_sizes: list[int]
    det_new_thresh: np.ndarray
    det_alone: np.ndarray

    @classmethod
    def build(cls, frames: Sequence[SessionFrame], n_rows: np.ndarray, n_dets: np.ndarray) -> _HostBatch:
        row_start = np.concatenate(([0], np.cumsum(n_rows)))
        det_start = np.concatenate(([0], np.cumsum(n_dets)))
        blk_start = np.concatenate(([0], np.cumsum(n_rows * n_rows)))
        n = int(row_start[-1])

        def col(name: str) -> np.ndarray:
            return np.concatenate([getattr(f.table, name).numpy().astype(np.int64) for f in frames] or [np.zeros(0)])

        sess_rows = np.repeat(np.arange(len(frames)), n_rows)
        sess_dets = np.repeat(np.arange(len(frames)), n_dets)
        key = sess_rows * GROUP_SHIFT + col("prompt_ids")
        det_key = sess_dets * GROUP_SHIFT + np.concatenate([f.det_prompt_ids for f in frames]).astype(np.int64)
        frame = np.repeat(np.array([f.frame_idx for f in frames], dtype=np.int64), n_rows)
        # duplicate counts as flattened diagonal blocks: source index in [N, N], row and column of each entry
        blk_row = np.concatenate([s + np.repeat(np.arange(k), k) for s, k in zip(row_start[:-1], n_rows, strict=True)] or [np.zeros(0)])
        blk_col = np.concatenate([s + np.tile(np.arange(k), k) for s, k in zip(row_start[:-1], n_rows, strict=True)] or [np.zeros(0)])
        blk_src = blk_row * n + blk_col
        dup = np.concatenate([f.table.dup_counts.numpy().reshape(-1) for f in frames] or [np.zeros(0)])
        parts = [key, col("first_frame"), col("keep_alive"), col("unmatched_frames"), col("last_occluded"),
                 col("absent_frames"), frame, det_key, blk_src, blk_row, blk_col, dup]
        parts = [p.astype(np.int64) for p in parts]
        det_new_thresh = np.repeat(np.array([f.cfg.new_det_thresh for f in frames], dtype=np.float32), n_dets)
        det_alone = np.repeat(n_rows == 0, n_dets)
        return cls(row_start, det_start, blk_start, np.concatenate(parts), [p.size for p in parts],
                   det_new_thresh, det_alone)


def _split(frames, host: _HostBatch, read: _Read, out_old, track_masks, memory_masks, memory_score_logits,
           det_masks, tentative: bool, fill_hole_masks: bool, make_room: bool) -> BatchPlan:
    """Host decisions that change row counts, then per-session tables and plans. ``make_room``: at
    ``max_num_objects``, absent objects give way to new ones (``_make_room``; only with eviction on)."""
    keep_global, new_global, out_index, per_session = [], [], [], []
    n = int(host.row_start[-1])
    for s, f in enumerate(frames):
        table, cfg, frame_idx = f.table, f.cfg, f.frame_idx
        r0, r1 = int(host.row_start[s]), int(host.row_start[s + 1])
        d0, d1 = int(host.det_start[s]), int(host.det_start[s + 1])
        num_trk = r1 - r0
        compact = np.cumsum(read.det_valid[d0:d1]) - 1  # candidate -> post-NMS detection index
        new_local = np.flatnonzero(read.is_new[d0:d1])
        removed, evicted = read.removed[r0:r1], read.evicted[r0:r1]
        num_dropped = 0
        if num_trk + new_local.size > cfg.max_num_objects:
            if make_room:
                evicted = _make_room(evicted, removed, read.absent[r0:r1], new_local.size, cfg.max_num_objects)
            # the reference counts every object of the previous frame, retracted or not
            live = int((~(removed | evicted)).sum()) if make_room else num_trk
            room = max(cfg.max_num_objects - live, 0)
            num_dropped = max(new_local.size - room, 0)
            # DEBUG: a crowded scene drops on every frame; the session warns once and then counts (``plan.num_dropped``)
            logger.debug("max_num_objects=%d reached: dropping %d new detections", cfg.max_num_objects, num_dropped)
            new_local = new_local[np.argsort(-f.det_scores[new_local], kind="stable")[:room]]
        keep = np.flatnonzero(~(removed | evicted))
        recondition_rows = np.flatnonzero(read.recondition[r0:r1])
        recondition_dets = compact[read.recondition_det[r0:r1][recondition_rows] - d0]
        new_ids = table.next_obj_id + np.arange(new_local.size, dtype=np.int64)
        new_scores = f.det_scores[new_local].astype(np.float32)
        num_new = new_local.size
        obj_ids = table.obj_ids.numpy()
        first_frame = np.concatenate([table.first_frame.numpy()[keep], np.full(num_new, frame_idx, dtype=np.int64)])
        confirmed = frame_idx - first_frame >= cfg.hotstart_delay - 1 if tentative else np.ones(first_frame.size, bool)
        dup = read.dup[host.blk_start[s]: host.blk_start[s + 1]].reshape(num_trk, num_trk)[keep][:, keep]
        new_table = MaskletTable(
            obj_ids=_t(np.concatenate([obj_ids[keep], new_ids])),
            prompt_ids=_t(np.concatenate([table.prompt_ids.numpy()[keep], f.det_prompt_ids[new_local].astype(np.int64)])),
            first_frame=_t(first_frame),
            det_score=_t(np.concatenate([table.det_score.numpy()[keep], new_scores])),
            tracker_score=_t(np.concatenate([read.tracker_score[r0:r1][keep], new_scores]).astype(np.float32)),
            keep_alive=_t(np.concatenate([read.keep_alive[r0:r1][keep], np.full(num_new, cfg.init_trk_keep_alive)])),
            unmatched_frames=_t(np.concatenate([read.unmatched[r0:r1][keep], np.zeros(num_new, np.int64)])),
            dup_counts=_t(np.pad(dup, ((0, num_new), (0, num_new)))),
            last_occluded=_t(np.concatenate([read.last_occluded[r0:r1][keep], np.full(num_new, NOT_SEEN)])),
            confirmed=_t(confirmed),
            absent_frames=_t(np.concatenate([read.absent[r0:r1][keep], np.zeros(num_new, np.int64)])),
            next_obj_id=table.next_obj_id + num_new,
        )
        keep_global.append(r0 + keep)
        new_global.append(d0 + new_local)
        hidden_ids = obj_ids[read.hidden[r0:r1]]
        per_session.append((dict(
            frame_idx=frame_idx, new_det_indices=_t(compact[new_local]), new_obj_ids=_t(new_ids),
            num_dropped=num_dropped, keep_rows=_t(keep), removed_obj_ids=_t(obj_ids[removed]),
            evicted_obj_ids=_t(obj_ids[evicted]),
            newly_confirmed_obj_ids=_t(obj_ids[keep][confirmed[: keep.size] & ~table.confirmed.numpy()[keep]]),
            recondition_rows=_t(recondition_rows), recondition_det_indices=_t(recondition_dets),
            occlusion_suppressed=_t(read.suppressed[r0:r1].copy()), hidden_obj_ids=_t(hidden_ids),
            out_obj_ids=new_table.obj_ids, out_prompt_ids=new_table.prompt_ids, out_scores=new_table.det_score,
            out_tracker_scores=new_table.tracker_score, out_tentative=_t(~confirmed),
            out_visible=_t(~np.isin(new_table.obj_ids.numpy(), hidden_ids)),
        ), new_table))
    keep_rows, new_dets = np.concatenate(keep_global), np.concatenate(new_global)
    # output masks of each session: its kept rows, then its new objects (one gather for the batch)
    device = track_masks.device
    new_masks = det_masks[_to_device(new_dets, device)] if new_dets.size else det_masks[:0]
    if fill_hole_masks and new_dets.size:
        new_masks = fill_holes(new_masks, frames[0].cfg.fill_hole_area)
    offset, k0 = n, 0
    for s, (fields, _) in enumerate(per_session):
        k = int(fields["new_obj_ids"].numel())
        out_index.append(np.concatenate([keep_global[s], offset + k0 + np.arange(k)]))
        k0 += k
    sizes = [len(i) for i in out_index]
    out_all = torch.cat([out_old, new_masks.to(out_old.dtype)])[_to_device(np.concatenate(out_index), device)]
    row_sizes = np.diff(host.row_start).tolist()
    track_split, memory_split = track_masks.split(row_sizes), memory_masks.split(row_sizes)
    score_split, out_split = memory_score_logits.split(row_sizes), out_all.split(sizes)
    plans = [FramePlan(**fields, track_masks=track_split[s], memory_masks=memory_split[s],
                       memory_score_logits=score_split[s], out_masks=out_split[s])
             for s, (fields, _) in enumerate(per_session)]
    return BatchPlan(plans=plans, tables=[t for _, t in per_session], keep_rows=keep_rows, new_dets=new_dets,
                     recondition=read.recondition.astype(bool), memory_masks=memory_masks,
                     memory_score_logits=memory_score_logits)


def _make_room(evicted: np.ndarray, removed: np.ndarray, absent: np.ndarray, num_new: int, cap: int) -> np.ndarray:
    """``evicted`` plus the objects to evict early so that ``num_new`` new ones fit under ``cap``.

    At the cap, an object missing from the output for a while should not hold its place against a
    visible new one: objects absent on this frame give way, longest absent first (the oldest row on
    ties). Objects that are visible are never evicted for a new one; new detections that still do
    not fit are dropped (and counted). Below the cap nothing changes (the reference's behaviour).
    """
    live = ~(removed | evicted)
    excess = int(live.sum()) + num_new - cap
    candidates = np.flatnonzero(live & (absent > 0))
    if excess <= 0 or candidates.size == 0:
        return evicted
    longest_first = candidates[np.argsort(-absent[candidates], kind="stable")][:excess]
    evicted = evicted.copy()
    evicted[longest_first] = True
    return evicted


def _t(a: np.ndarray) -> torch.Tensor:
    """A host array as a CPU tensor (no copy, no device work)."""
    return torch.from_numpy(np.ascontiguousarray(a))
