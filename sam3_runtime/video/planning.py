"""Per-frame planning of SAM 3's video logic: which objects to create, retract, re-condition, hide.

``plan_frame`` mirrors the planning phase of transformers' ``Sam3VideoModel`` (association,
hot-start, keep-alive, periodic re-conditioning, occlusion-based overlap suppression, the masks
to encode into memory, and the frame's outputs) as one function from a ``MaskletTable`` and this
frame's detections and tracker masks to a ``FramePlan`` and the next table. The engine runs the
detector and tracker, calls ``plan_frame``, then executes the plan (adds the new objects to the
tracker, drops retracted ones, encodes ``memory_masks``).

Hot-start without delaying output (``hotstart_mode``):

* ``"tentative"`` (default). The official model holds every output back by ``hotstart_delay``
  frames so that young tracks which turn out to be spurious can be removed before anyone sees
  them. We apply the same removal rules but emit every frame at once: an object is reported as
  *tentative* during its first ``hotstart_delay`` frames, and either becomes *confirmed* (its
  ``hotstart_delay``-th frame is the last on which it could be removed, and it is flagged
  confirmed from that frame's output on) or is *retracted*: listed in
  ``FramePlan.removed_obj_ids`` and dropped. It is retracted when, while still young, it has
  been non-empty yet unmatched by any detection on ``hotstart_unmatch_thresh`` frames, or it
  has shared a detection with an older object ``hotstart_dup_thresh`` times. Consumers that
  want only final answers keep confirmed objects; earlier tentative outputs of a retracted id
  should be discarded. Decisions (ids, removals, masks) equal transformers' offline run.
* ``"off"``. transformers' streaming mode: nothing is ever retracted (and keep-alive hiding is
  off too); every object is confirmed from its first frame.

Bookkeeping bounds. transformers keeps per-frame lists (unmatched frames per object, overlap
frames per object pair, tracker scores of every frame, suppressed ids of every frame). The
rules only ever use their lengths, and only while an object is young, so the table stores
counters instead: ``unmatched_frames`` per object and ``dup_counts`` per ordered object pair.
Nothing in the table grows with the number of frames; rows of retracted objects are dropped,
which loses nothing (a frozen count could only have triggered on an earlier frame).

Eviction (``evict_after_frames``; the reference has none). The reference keeps every object
it ever started until the session ends, hidden once it is lost, so on an endless stream the
number of tracked objects, their memory and the cost of each frame only grow. Here an object
that has been absent from the output (empty, hidden or suppressed) on ``evict_after_frames``
consecutive frames is dropped with its memory and listed in ``FramePlan.evicted_obj_ids``; its
id is never reused. ``None`` keeps the reference's behaviour.

Streaming is forward-only: the reference's ``reverse`` propagation is not mirrored.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.heuristics import (
    NO_OBJ_LOGIT,
    associate,
    fill_holes,
    occlusion_suppression,
    suppress_shrunk_masks,
)

logger = logging.getLogger(__name__)

HotstartMode = Literal["tentative", "off"]

# ``last_occluded`` of an object the occlusion step has not seen yet (it was created on the
# previous frame). It then counts as never occluded, or as always occluded if it is being retracted.
NOT_SEEN = -2
NEVER_OCCLUDED = -1
ALWAYS_OCCLUDED = 100_000


@dataclass(frozen=True)
class MaskletTable:
    """Per-stream bookkeeping of the tracked objects, one row per object in tracker order.

    Rows are in creation order (so ids ascend); the tracker must hold its objects in the same
    order. All tensors live on the CPU; their size depends on the number of objects only.
    """

    obj_ids: torch.Tensor  # [N] int64, never reused
    prompt_ids: torch.Tensor  # [N] int64 concept that created the object
    first_frame: torch.Tensor  # [N] int64 frame of creation
    det_score: torch.Tensor  # [N] float32 detection score at creation: the object's output score
    tracker_score: torch.Tensor  # [N] float32 latest tracker probability (creation: detection score)
    keep_alive: torch.Tensor  # [N] int64 keep-alive counter
    unmatched_frames: torch.Tensor  # [N] int64 frames non-empty but unmatched
    dup_counts: torch.Tensor  # [N, N] int64: [i, j] = times younger j shared a detection with i (i first)
    last_occluded: torch.Tensor  # [N] int64 last frame empty or suppressed; NEVER_OCCLUDED / NOT_SEEN
    confirmed: torch.Tensor  # [N] bool past hot-start (always True with hotstart_mode="off")
    absent_frames: torch.Tensor  # [N] int64 consecutive frames absent from the output (eviction)
    next_obj_id: int = 0

    @classmethod
    def empty(cls, next_obj_id: int = 0) -> MaskletTable:
        """A table with no rows whose next object gets id ``next_obj_id``."""

        def none(dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(0, dtype=dtype)

        return cls(
            obj_ids=none(), prompt_ids=none(), first_frame=none(), det_score=none(torch.float32),
            tracker_score=none(torch.float32), keep_alive=none(), unmatched_frames=none(),
            dup_counts=torch.zeros(0, 0, dtype=torch.long), last_occluded=none(), confirmed=none(torch.bool),
            absent_frames=none(), next_obj_id=next_obj_id,
        )

    def __len__(self) -> int:
        return self.obj_ids.shape[0]

    def with_allocated_id(self) -> tuple[MaskletTable, int]:
        """This table with ``next_obj_id`` advanced past the returned id (for objects kept outside the table)."""
        return dataclasses.replace(self, next_obj_id=self.next_obj_id + 1), self.next_obj_id

    def without_rows(self, drop: torch.Tensor) -> tuple[MaskletTable, torch.Tensor]:
        """This table without the rows where ``drop`` ([N] bool) is True, and the kept old-row indices.

        Every per-object tensor loses the same rows (``dup_counts`` its rows and columns), so the
        rows stay aligned; ``next_obj_id`` is kept, as ids are never reused.
        """
        if drop.shape != (len(self),):
            raise ValueError(f"drop mask {tuple(drop.shape)} does not match a table of {len(self)} rows")
        keep = torch.nonzero(~drop).flatten()
        fields = {}
        for fld in dataclasses.fields(self):
            v = getattr(self, fld.name)
            if isinstance(v, torch.Tensor) and v.dim() == 2:
                v = v[keep][:, keep]
            elif isinstance(v, torch.Tensor):
                v = v[keep]
            fields[fld.name] = v
        return MaskletTable(**fields), keep


@dataclass(frozen=True)
class FramePlan:
    """Decisions for one frame. "Old rows" index the input table (and ``trk_masks``)."""

    frame_idx: int
    # new objects, appended to the table in this order
    new_det_indices: torch.Tensor  # [K] int64 detections that start objects
    new_obj_ids: torch.Tensor  # [K] int64
    num_dropped: int  # new detections dropped because of max_num_objects
    # existing objects
    keep_rows: torch.Tensor  # [N'] int64 old rows that survive, in order
    removed_obj_ids: torch.Tensor  # [R] int64 retracted by hot-start this frame
    evicted_obj_ids: torch.Tensor  # [E] int64 dropped after evict_after_frames frames absent
    newly_confirmed_obj_ids: torch.Tensor  # [C] int64 old objects confirmed this frame
    recondition_rows: torch.Tensor  # [S] int64 old rows whose memory this frame becomes a conditioning frame
    recondition_det_indices: torch.Tensor  # [S] int64 detection that confirmed each of them
    occlusion_suppressed: torch.Tensor  # [N] bool old rows blanked by occlusion suppression
    hidden_obj_ids: torch.Tensor  # [.] int64 kept but hidden from this frame's output (keep-alive)
    # memory encoding of the old rows (before removal; slice with keep_rows)
    track_masks: torch.Tensor  # [N, H, W] tracker masks after occlusion suppression
    memory_masks: torch.Tensor  # [N, H, W] masks to encode (re-conditioning and area-shrinkage applied)
    memory_score_logits: torch.Tensor  # [N] +10 where memory_masks has foreground, else -10
    # this frame's output, rows in the new table's order (kept old rows, then new objects)
    out_obj_ids: torch.Tensor  # [M] int64
    out_prompt_ids: torch.Tensor  # [M] int64
    out_masks: torch.Tensor  # [M, H, W] mask logits (low resolution)
    out_scores: torch.Tensor  # [M] float32 detection score at creation
    out_tracker_scores: torch.Tensor  # [M] float32 tracker probability (new objects: detection score)
    out_tentative: torch.Tensor  # [M] bool still within hot-start (may yet be retracted)
    out_visible: torch.Tensor  # [M] bool False for hidden objects


def plan_frame(
    table: MaskletTable,
    frame_idx: int,
    det_masks: torch.Tensor,
    det_scores: torch.Tensor,
    det_prompt_ids: torch.Tensor,
    trk_masks: torch.Tensor,
    trk_scores: torch.Tensor,
    cfg: VideoConfig,
    *,
    hotstart_mode: HotstartMode = "tentative",
    fill_hole_masks: bool = False,
    evict_after_frames: int | None = None,
) -> tuple[FramePlan, MaskletTable]:
    """Plan one frame.

    det_masks ``[D, H, W]`` logits, det_scores ``[D]`` probabilities and det_prompt_ids ``[D]``
    come from ``filter_detections``; trk_masks ``[N, H, W]`` logits and trk_scores ``[N]`` (the
    tracker's object-score *logits*) are the propagated tracks, one per table row. With
    ``fill_hole_masks`` the tracker masks and the new objects' output masks go through
    ``fill_holes(cfg.fill_hole_area)`` first, as in the official model (off for transformers
    parity). ``evict_after_frames`` drops objects absent from the output that long (module docstring).
    """
    if hotstart_mode not in ("tentative", "off"):
        raise ValueError(f"hotstart_mode must be 'tentative' or 'off', got {hotstart_mode!r}")
    if evict_after_frames is not None and evict_after_frames < 1:
        raise ValueError(f"evict_after_frames must be >= 1 or None, got {evict_after_frames}")
    num_trk = len(table)
    if trk_masks.shape[0] != num_trk or trk_scores.numel() != num_trk:
        raise ValueError(f"{num_trk} tracked objects but trk_masks {tuple(trk_masks.shape)}, trk_scores {tuple(trk_scores.shape)}")
    device = det_masks.device
    trk_scores = trk_scores.reshape(-1).float()
    if fill_hole_masks:
        trk_masks = fill_holes(trk_masks, cfg.fill_hole_area)
    det_scores = det_scores.float()
    tentative = hotstart_mode == "tentative"

    # -- association and new objects ------------------------------------------------------------
    assoc = associate(det_masks, det_scores, det_prompt_ids.to(device), trk_masks, table.prompt_ids.to(device), cfg)
    matched, trk_unmatched, trk_empty = assoc.matched.cpu(), assoc.trk_unmatched.cpu(), assoc.trk_empty.cpu()
    new_det = assoc.is_new.nonzero().flatten().cpu()
    num_dropped = 0
    if num_trk + len(new_det) > cfg.max_num_objects:
        room = max(cfg.max_num_objects - num_trk, 0)
        num_dropped = len(new_det) - room
        # DEBUG: a crowded scene drops on every frame; the session warns once and then counts (``plan.num_dropped``)
        logger.debug("max_num_objects=%d reached: dropping %d new detections", cfg.max_num_objects, num_dropped)
        new_det = new_det[torch.topk(det_scores.cpu()[new_det], k=room).indices]
    new_ids = table.next_obj_id + torch.arange(len(new_det), dtype=torch.long)
    new_scores = det_scores.cpu()[new_det]

    # -- keep-alive and hot-start counters ------------------------------------------------------
    keep_alive = torch.where(matched.any(dim=0), (table.keep_alive + 1).clamp(max=cfg.max_trk_keep_alive), table.keep_alive)
    keep_alive = torch.where(trk_unmatched, (keep_alive - 1).clamp(min=cfg.min_trk_keep_alive), keep_alive)
    if cfg.decrease_trk_keep_alive_for_empty_masklets:
        keep_alive = torch.where(trk_empty, (keep_alive - 1).clamp(min=cfg.min_trk_keep_alive), keep_alive)
    unmatched_frames = table.unmatched_frames + trk_unmatched.long()
    dup_counts = table.dup_counts + _duplicate_events(matched, table.first_frame)

    # -- hot-start retraction and keep-alive hiding ---------------------------------------------
    young = table.first_frame > frame_idx - cfg.hotstart_delay
    removed = torch.zeros(num_trk, dtype=torch.bool)
    hidden = torch.zeros(num_trk, dtype=torch.bool)
    if tentative:
        ever_unmatched = unmatched_frames > 0
        too_unmatched = ever_unmatched & (unmatched_frames >= cfg.hotstart_unmatch_thresh)
        duplicate = ((dup_counts > 0) & (dup_counts >= cfg.hotstart_dup_thresh)).any(dim=0)
        removed = young & (too_unmatched | duplicate)
        if not cfg.suppress_unmatched_only_within_hotstart:
            # the reference checks this before its duplicate rule, so only unmatched-retracted objects are exempt
            hidden = ever_unmatched & (keep_alive <= 0) & ~(young & too_unmatched)

    # -- periodic re-conditioning from confident detections ---------------------------------------
    recondition_det = assoc.recondition_det.cpu()
    recondition = torch.zeros(num_trk, dtype=torch.bool)
    if cfg.recondition_every_nth_frame > 0 and frame_idx % cfg.recondition_every_nth_frame == 0:
        # the reference compares the tracker's object-score logit with high_conf_thresh
        recondition = (recondition_det >= 0) & (trk_scores.cpu() > cfg.high_conf_thresh)
    recondition_rows = recondition.nonzero().flatten()
    recondition_dets = recondition_det[recondition_rows]

    # -- occlusion-based overlap suppression ------------------------------------------------------
    track_masks = trk_masks.clone()
    suppressed = torch.zeros(num_trk, dtype=torch.bool)
    last_occluded = torch.full((num_trk,), NOT_SEEN, dtype=torch.long)
    threshold = cfg.suppress_overlapping_based_on_recent_occlusion_threshold
    if num_trk > 0 and threshold > 0.0:
        seen = table.last_occluded != NOT_SEEN
        default = torch.where(removed, torch.tensor(ALWAYS_OCCLUDED), torch.tensor(NEVER_OCCLUDED))
        last_prev = torch.where(seen, table.last_occluded, default)
        suppressed = occlusion_suppression(trk_masks, last_prev.to(device), table.prompt_ids.to(device), threshold).cpu()
        track_masks[suppressed.to(device)] = NO_OBJ_LOGIT
        occluded = ~(trk_masks > 0).flatten(1).any(dim=1).cpu()
        last_occluded = torch.where(occluded | suppressed, frame_idx, last_prev)

    # -- eviction of objects long absent from the output ------------------------------------------
    absent = trk_empty | hidden | suppressed
    absent_frames = torch.where(absent, table.absent_frames + 1, torch.zeros_like(table.absent_frames))
    evicted = torch.zeros(num_trk, dtype=torch.bool)
    if evict_after_frames is not None:
        evicted = (absent_frames >= evict_after_frames) & ~removed

    # -- masks to encode into memory --------------------------------------------------------------
    memory_masks = track_masks.clone()
    if not cfg.recondition_on_trk_masks and len(recondition_rows) > 0:
        memory_masks[recondition_rows.to(device)] = (det_masks[recondition_dets.to(device)] >= 0.5).to(memory_masks.dtype)
    memory_masks = suppress_shrunk_masks(memory_masks, table.prompt_ids.to(device))
    memory_score_logits = torch.where((memory_masks > 0).flatten(1).any(dim=1), 10.0, -10.0)

    # -- next table ---------------------------------------------------------------------------------
    keep_rows = (~(removed | evicted)).nonzero().flatten()
    num_new = len(new_det)
    first_frame = torch.cat([table.first_frame[keep_rows], torch.full((num_new,), frame_idx, dtype=torch.long)])
    confirmed = torch.ones_like(first_frame, dtype=torch.bool)
    if tentative:
        confirmed = frame_idx - first_frame >= cfg.hotstart_delay - 1
    kept_dup = dup_counts[keep_rows][:, keep_rows]
    new_table = MaskletTable(
        obj_ids=torch.cat([table.obj_ids[keep_rows], new_ids]),
        prompt_ids=torch.cat([table.prompt_ids[keep_rows], det_prompt_ids.cpu().long()[new_det]]),
        first_frame=first_frame,
        det_score=torch.cat([table.det_score[keep_rows], new_scores]),
        tracker_score=torch.cat([trk_scores.sigmoid().cpu()[keep_rows], new_scores]),
        keep_alive=torch.cat([keep_alive[keep_rows], torch.full((num_new,), cfg.init_trk_keep_alive, dtype=torch.long)]),
        unmatched_frames=torch.cat([unmatched_frames[keep_rows], torch.zeros(num_new, dtype=torch.long)]),
        dup_counts=torch.nn.functional.pad(kept_dup, (0, num_new, 0, num_new)),
        last_occluded=torch.cat([last_occluded[keep_rows], torch.full((num_new,), NOT_SEEN, dtype=torch.long)]),
        confirmed=confirmed,
        absent_frames=torch.cat([absent_frames[keep_rows], torch.zeros(num_new, dtype=torch.long)]),
        next_obj_id=table.next_obj_id + num_new,
    )

    # -- this frame's output ------------------------------------------------------------------------
    out_masks = track_masks.clone()
    if len(recondition_rows) > 0:
        # re-conditioned objects are shown with the confirming detection's mask
        out_masks[recondition_rows.to(device)] = det_masks[recondition_dets.to(device)].to(out_masks.dtype)
    new_masks = det_masks[new_det.to(device)]
    if fill_hole_masks:
        new_masks = fill_holes(new_masks, cfg.fill_hole_area)
    out_masks = torch.cat([out_masks[keep_rows.to(device)], new_masks.to(out_masks.dtype)])
    hidden_ids = table.obj_ids[hidden]
    plan = FramePlan(
        frame_idx=frame_idx,
        new_det_indices=new_det,
        new_obj_ids=new_ids,
        num_dropped=num_dropped,
        keep_rows=keep_rows,
        removed_obj_ids=table.obj_ids[removed],
        evicted_obj_ids=table.obj_ids[evicted],
        newly_confirmed_obj_ids=table.obj_ids[keep_rows][confirmed[: len(keep_rows)] & ~table.confirmed[keep_rows]],
        recondition_rows=recondition_rows,
        recondition_det_indices=recondition_dets,
        occlusion_suppressed=suppressed,
        hidden_obj_ids=hidden_ids,
        track_masks=track_masks,
        memory_masks=memory_masks,
        memory_score_logits=memory_score_logits.to(device),
        out_obj_ids=new_table.obj_ids,
        out_prompt_ids=new_table.prompt_ids,
        out_masks=out_masks,
        out_scores=new_table.det_score,
        out_tracker_scores=new_table.tracker_score,
        out_tentative=~new_table.confirmed,
        out_visible=~torch.isin(new_table.obj_ids, hidden_ids),
    )
    return plan, new_table


def _duplicate_events(matched: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` counts of this frame's "j duplicates older i" events.

    For every detection matched to two or more tracks, the track that appeared first (lowest
    row on ties) is the original and each other matched track is counted as its duplicate once.
    """
    num_det, num_trk = matched.shape
    if num_det == 0 or num_trk == 0:
        return torch.zeros(num_trk, num_trk, dtype=torch.long)
    age_key = torch.where(matched, first_frame[None, :], torch.iinfo(torch.long).max)
    original = torch.nn.functional.one_hot(age_key.argmin(dim=1), num_trk).bool() & matched
    duplicates = matched & ~original
    return original.long().T @ duplicates.long()

