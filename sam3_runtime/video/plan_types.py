"""The types of SAM 3's per-frame video planning: the masklet table, the frame plan, their constants.

See ``planning`` for the rules and ``plan_batch`` for how they run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

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
    """Decisions for one frame. "Old rows" index the input table (and ``trk_masks``).

    Ids, rows, scores and flags are CPU tensors (the host has them after the step's one read);
    masks and memory score logits stay on the device."""

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
