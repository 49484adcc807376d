"""Per-frame planning of SAM 3's video logic: which objects to create, retract, re-condition, hide.

``plan_frame`` mirrors the planning phase of transformers' ``Sam3VideoModel`` (association,
hot-start, keep-alive, periodic re-conditioning, occlusion-based overlap suppression, the masks
to encode into memory, and the frame's outputs) as one function from a ``MaskletTable`` and this
frame's detections and tracker masks to a ``FramePlan`` and the next table. The engine runs the
detector and tracker, plans every session of the step at once (``plan_batch.plan_frames``, of
which ``plan_frame`` is the one-session case), then executes the plans (adds the new objects to
the tracker, drops retracted ones, encodes ``memory_masks``).

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
id is never reused. With eviction on, an object absent on this frame also gives way to a new
detection once the session holds ``max_num_objects`` (longest absent first), so a crowd of lost
objects cannot block visible new ones until they are evicted. ``None`` keeps the reference's
behaviour in both.

Streaming is forward-only: the reference's ``reverse`` propagation is not mirrored.
"""

from __future__ import annotations

import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.plan_batch import SessionFrame, plan_frames
from sam3_runtime.video.plan_types import (  # noqa: F401  (re-exported: the planning API lives here)
    ALWAYS_OCCLUDED,
    NEVER_OCCLUDED,
    NOT_SEEN,
    FramePlan,
    HotstartMode,
    MaskletTable,
)


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
    num_trk = len(table)
    if trk_masks.shape[0] != num_trk or trk_scores.numel() != num_trk:
        raise ValueError(f"{num_trk} tracked objects but trk_masks {tuple(trk_masks.shape)}, trk_scores {tuple(trk_scores.shape)}")
    frame = SessionFrame(table=table, frame_idx=frame_idx, cfg=cfg, det_prompt_ids=det_prompt_ids.cpu().long().numpy(),
                         det_scores=det_scores.detach().float().cpu().numpy())
    valid = torch.ones(det_masks.shape[0], dtype=torch.bool, device=det_masks.device)
    batch = plan_frames([frame], det_masks, valid, trk_masks.to(det_masks.device), trk_scores.to(det_masks.device),
                        hotstart_mode=hotstart_mode, fill_hole_masks=fill_hole_masks,
                        evict_after_frames=evict_after_frames)
    return batch.plans[0], batch.tables[0]
