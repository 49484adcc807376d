"""Per-stream tracker state: concepts, the masklet table, the memory bank and pending prompts.

A ``TrackerSession`` is owned by one engine; its memory lives on that engine's device, its
masklet table on the host. Its size grows with the number of objects and concepts, never with
the number of frames. ``state_dict`` /
``from_state_dict`` move a stream to another engine (tensors go through the CPU).

The session is the only writer of its fields: the engine reads them and changes them through
the methods below, each of which keeps these invariants:

* ``concept_rows[i]`` is the memory row of table row ``i`` (``len(concept_rows) == len(table)``);
* ``prompted_rows[i]`` is the memory row of prompted object ``prompted_ids[i]``;
* every memory row is held by exactly one object, and freed when that object goes;
* track ids and prompt ids are never reused, not even after ``reset``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.memory import ObjectMemory
from sam3_runtime.video.plan_types import FramePlan, MaskletTable

# 2 renamed box_ids / box_rows (they hold point-prompted objects too); format 1 still loads.
STATE_FORMAT = 2
_READABLE_FORMATS = (1, 2)
DROPPED_WARNING_INTERVAL_S = 60.0  # a crowded scene drops detections on every frame: warn this often at most

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptedObject:
    """An object to start from a box and/or points on the session's next frame (model-input pixels
    are computed by the engine; these are pixels of the original frame)."""

    track_id: int
    box_xyxy: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()


@dataclass(frozen=True)
class AppliedPlan:
    """Memory rows after ``TrackerSession.apply_plan``: of the surviving tracked objects (in the
    plan's ``keep_rows`` order) and of the plan's new objects (in ``new_det_indices`` order)."""

    kept_rows: list[int]
    new_rows: list[int]


@dataclass
class DroppedDetections:
    """New detections the session dropped at ``max_num_objects``: warned about on the first frame that
    drops any, then at most once per ``DROPPED_WARNING_INTERVAL_S`` with the count since the last warning."""

    total: int = 0
    unreported: int = 0  # dropped since the last warning
    unreported_frames: int = 0
    warned_at: float | None = None  # time.monotonic() of the last warning

    def add(self, dropped: int, now: float) -> tuple[int, int] | None:
        """Count ``dropped``; (detections, frames) to warn about now, or None while rate-limited."""
        self.total += dropped
        self.unreported += dropped
        self.unreported_frames += 1
        if self.warned_at is not None and now - self.warned_at < DROPPED_WARNING_INTERVAL_S:
            return None
        report = (self.unreported, self.unreported_frames)
        self.unreported, self.unreported_frames, self.warned_at = 0, 0, now
        return report


@dataclass
class TrackerSession:
    stream_id: str
    memory: ObjectMemory
    concepts: dict[int, str] = field(default_factory=dict)  # prompt id -> concept text, ids never reused
    next_prompt_id: int = 0
    table: MaskletTable = field(default_factory=MaskletTable.empty)
    concept_rows: list[int] = field(default_factory=list)  # memory row of each table row
    prompted_ids: list[int] = field(default_factory=list)  # box/point-prompted objects (not driven by the detector)
    prompted_rows: list[int] = field(default_factory=list)  # memory row of each prompted object
    pending: list[PromptedObject] = field(default_factory=list)
    frame_index: int = 0  # index of the next frame
    frame_size: tuple[int, int] | None = None  # (height, width) of the stream's frames
    video: VideoConfig | None = None  # this stream's video heuristics, when they differ from the engine's
    dropped: DroppedDetections = field(default_factory=DroppedDetections)  # for warnings only; not saved

    # -- reading ----------------------------------------------------------------------------
    def concept_id(self, text: str) -> int | None:
        return next((pid for pid, t in self.concepts.items() if t == text), None)

    @property
    def num_objects(self) -> int:
        return len(self.table) + len(self.prompted_ids)

    # -- concepts ---------------------------------------------------------------------------
    def add_concept(self, concept: str) -> int:
        """The prompt id of ``concept`` (stripped), allocating a new one the first time it is seen."""
        text = concept.strip()
        if not text:
            raise ValueError("empty concept: give a noun phrase such as 'forklift'")
        pid = self.concept_id(text)
        if pid is None:
            pid = self.next_prompt_id
            self.concepts[pid] = text
            self.next_prompt_id += 1
        return pid

    def remove_concept(self, concept: str) -> list[int]:
        """Forget ``concept`` and every object it started (with their memory); returns their track ids."""
        pid = self.concept_id(concept.strip())
        if pid is None:
            raise ValueError(
                f"stream {self.stream_id!r} has no concept {concept!r}; it has {sorted(self.concepts.values())}"
            )
        del self.concepts[pid]
        mine = self.table.prompt_ids == pid
        removed = self.table.obj_ids[mine].tolist()
        self._drop_table_rows(mine)
        return removed

    # -- prompted objects -------------------------------------------------------------------
    def queue_prompt(self, **prompt) -> int:
        """Queue a box/point prompt (``PromptedObject`` fields but the id) for the next frame; returns its track id."""
        track_id = self._allocate_track_id()
        self.pending.append(PromptedObject(track_id=track_id, **prompt))
        return track_id

    def take_pending(self) -> list[PromptedObject]:
        """The queued prompts, in order; the queue is left empty (they are started on this frame)."""
        pending, self.pending = self.pending, []
        return pending

    def start_prompted(self, track_id: int) -> int:
        """Give a taken prompt's object a memory row and start tracking it; returns the row."""
        [row] = self.memory.add_objects(1)
        self.prompted_ids.append(track_id)
        self.prompted_rows.append(row)
        return row

    def remove_object(self, track_id: int) -> None:
        """Forget one object, whether prompted, detected or still queued; an unknown id is a no-op."""
        if track_id in self.prompted_ids:
            i = self.prompted_ids.index(track_id)
            self.memory.remove_objects([self.prompted_rows[i]])
            del self.prompted_ids[i], self.prompted_rows[i]
            return
        rows = self.table.obj_ids == track_id
        if bool(rows.any()):
            self._drop_table_rows(rows)
        else:
            self.pending = [p for p in self.pending if p.track_id != track_id]

    # -- frames -----------------------------------------------------------------------------
    def accept_frame_size(self, size: tuple[int, int]) -> None:
        """Fix the stream's (height, width) on its first frame; later frames must match it."""
        if self.frame_size is None:
            self.frame_size = size
        elif self.frame_size != size:
            raise ValueError(
                f"stream {self.stream_id!r}: frame is {size[1]}x{size[0]} but the stream's frames are "
                f"{self.frame_size[1]}x{self.frame_size[0]}; open a new session for another resolution"
            )

    def apply_plan(self, plan: FramePlan, table: MaskletTable, now: float | None = None) -> AppliedPlan:
        """Move to ``plan_frame``'s next ``table``: free the memory of rows the plan drops and give
        each new object a memory row (written later in the step, once the tracker has run).
        ``now`` (``time.monotonic()`` by default) paces the warning about detections dropped at ``max_num_objects``."""
        kept = plan.keep_rows.tolist()
        if len(table) != len(kept) + plan.new_det_indices.numel():
            raise ValueError(f"table of {len(table)} rows does not follow a plan keeping {len(kept)} "
                             f"and adding {plan.new_det_indices.numel()}")
        self._free_rows_not_in(kept)
        new_rows = self.memory.add_objects(plan.new_det_indices.numel())
        self.table = table
        self.concept_rows = self.concept_rows + new_rows
        if plan.num_dropped:
            self._report_dropped(plan.num_dropped, time.monotonic() if now is None else now)
        return AppliedPlan(kept_rows=self.concept_rows[: len(kept)], new_rows=list(new_rows))

    def advance_frame(self) -> None:
        self.frame_index += 1

    def reset(self) -> None:
        """Forget every object; concepts stay and ids keep counting (they are never reused)."""
        self.memory.reset()
        self.table = MaskletTable.empty(next_obj_id=self.table.next_obj_id)
        self.concept_rows, self.prompted_ids, self.prompted_rows, self.pending = [], [], [], []

    # -- internals --------------------------------------------------------------------------
    def _report_dropped(self, dropped: int, now: float) -> None:
        report = self.dropped.add(dropped, now)
        if report is not None:
            detections, frames = report
            logger.warning("stream %r: max_num_objects reached, %d new detections dropped over %d frame(s); "
                           "raise engine.max_objects_per_stream in the job file to track them (warned at most "
                           "once a minute)", self.stream_id, detections, frames)

    def _allocate_track_id(self) -> int:
        self.table, track_id = self.table.with_allocated_id()
        return track_id

    def _drop_table_rows(self, drop: torch.Tensor) -> None:
        self.table, keep = self.table.without_rows(drop)
        self._free_rows_not_in(keep.tolist())

    def _free_rows_not_in(self, keep: list[int]) -> None:
        """Keep only table rows ``keep`` (old-row indices, in order) in ``concept_rows``; free the others' memory."""
        dropped = sorted(set(range(len(self.concept_rows))) - set(keep))
        if dropped:
            self.memory.remove_objects([self.concept_rows[i] for i in dropped])
        self.concept_rows = [self.concept_rows[i] for i in keep]

    # -- moving between engines -------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "stream_id": self.stream_id,
            "memory": self.memory.state_dict(),
            "concepts": dict(self.concepts),
            "next_prompt_id": self.next_prompt_id,
            "table": {f.name: _cpu(getattr(self.table, f.name)) for f in dataclasses.fields(self.table)},
            "concept_rows": list(self.concept_rows),
            "prompted_ids": list(self.prompted_ids),
            "prompted_rows": list(self.prompted_rows),
            "pending": [dataclasses.asdict(p) for p in self.pending],
            "frame_index": self.frame_index,
            "frame_size": self.frame_size,
            "video": dataclasses.asdict(self.video) if self.video else None,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> TrackerSession:
        fmt = state.get("format")
        if fmt not in _READABLE_FORMATS:
            raise ValueError(f"session state format {fmt!r} is not one of {_READABLE_FORMATS}: "
                             "it was saved by another version")
        prompted = ("box_ids", "box_rows") if fmt == 1 else ("prompted_ids", "prompted_rows")
        return cls(
            stream_id=state["stream_id"],
            memory=ObjectMemory.from_state_dict(state["memory"], device=device),
            concepts={int(k): v for k, v in state["concepts"].items()},
            next_prompt_id=state["next_prompt_id"],
            table=MaskletTable(**state["table"]),
            concept_rows=list(state["concept_rows"]),
            prompted_ids=list(state[prompted[0]]),
            prompted_rows=list(state[prompted[1]]),
            pending=[_prompted_object(p) for p in state["pending"]],
            frame_index=state["frame_index"],
            frame_size=tuple(state["frame_size"]) if state["frame_size"] else None,
            video=VideoConfig(**state["video"]) if state.get("video") else None,
        )


def _prompted_object(saved: dict) -> PromptedObject:
    """A ``PromptedObject`` from its ``asdict`` form (lists back to tuples)."""
    fields = dict(saved)
    if fields.get("box_xyxy") is not None:
        fields["box_xyxy"] = tuple(fields["box_xyxy"])
    fields["points"] = tuple(tuple(p) for p in fields.get("points", ()))
    fields["point_labels"] = tuple(fields.get("point_labels", ()))
    return PromptedObject(**fields)


def _cpu(v):
    return v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
