"""Per-stream tracker state: concepts, the masklet table, the memory bank and pending prompts.

A ``TrackerSession`` is owned by one engine and lives on that engine's device. Its size grows
with the number of objects and concepts, never with the number of frames. ``state_dict`` /
``from_state_dict`` move a stream to another engine (tensors go through the CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.memory import ObjectMemory
from sam3_runtime.video.planning import MaskletTable

STATE_FORMAT = 1


@dataclass(frozen=True)
class PromptedObject:
    """An object to start from a box and/or points on the session's next frame (model-input pixels
    are computed by the engine; these are pixels of the original frame)."""

    track_id: int
    box_xyxy: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()


@dataclass
class TrackerSession:
    stream_id: str
    memory: ObjectMemory
    concepts: dict[int, str] = field(default_factory=dict)  # prompt id -> concept text, ids never reused
    next_prompt_id: int = 0
    table: MaskletTable = field(default_factory=MaskletTable.empty)
    concept_rows: list[int] = field(default_factory=list)  # memory row of each table row
    box_ids: list[int] = field(default_factory=list)  # prompted objects (not driven by the detector)
    box_rows: list[int] = field(default_factory=list)
    pending: list[PromptedObject] = field(default_factory=list)
    frame_index: int = 0  # index of the next frame
    frame_size: tuple[int, int] | None = None  # (height, width) of the stream's frames
    video: VideoConfig | None = None  # this stream's video heuristics, when they differ from the engine's

    # -- ids --------------------------------------------------------------------------------
    def allocate_track_id(self) -> int:
        track_id = self.table.next_obj_id
        self.table = dataclasses.replace(self.table, next_obj_id=track_id + 1)
        return track_id

    def concept_id(self, text: str) -> int | None:
        return next((pid for pid, t in self.concepts.items() if t == text), None)

    @property
    def num_objects(self) -> int:
        return len(self.table) + len(self.box_ids)

    # -- edits ------------------------------------------------------------------------------
    def drop_table_rows(self, keep: torch.Tensor) -> None:
        """Keep only table rows ``keep`` (old-row indices, in order) and free the others' memory."""
        keep_list = keep.tolist()
        dropped = sorted(set(range(len(self.concept_rows))) - set(keep_list))
        if dropped:
            self.memory.remove_objects([self.concept_rows[i] for i in dropped])
        self.concept_rows = [self.concept_rows[i] for i in keep_list]

    def remove_box_objects(self, track_ids: set[int]) -> None:
        gone = [i for i, t in enumerate(self.box_ids) if t in track_ids]
        if gone:
            self.memory.remove_objects([self.box_rows[i] for i in gone])
            self.box_ids = [t for i, t in enumerate(self.box_ids) if i not in gone]
            self.box_rows = [r for i, r in enumerate(self.box_rows) if i not in gone]

    def reset(self) -> None:
        """Forget every object; concepts stay and ids keep counting (they are never reused)."""
        next_id = self.table.next_obj_id
        self.memory.reset()
        self.table = dataclasses.replace(MaskletTable.empty(), next_obj_id=next_id)
        self.concept_rows, self.box_ids, self.box_rows, self.pending = [], [], [], []

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
            "box_ids": list(self.box_ids),
            "box_rows": list(self.box_rows),
            "pending": [dataclasses.asdict(p) for p in self.pending],
            "frame_index": self.frame_index,
            "frame_size": self.frame_size,
            "video": dataclasses.asdict(self.video) if self.video else None,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> TrackerSession:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"session state format {state.get('format')!r} is not {STATE_FORMAT}: it was saved by another version")
        return cls(
            stream_id=state["stream_id"],
            memory=ObjectMemory.from_state_dict(state["memory"], device=device),
            concepts={int(k): v for k, v in state["concepts"].items()},
            next_prompt_id=state["next_prompt_id"],
            table=MaskletTable(**state["table"]),
            concept_rows=list(state["concept_rows"]),
            box_ids=list(state["box_ids"]),
            box_rows=list(state["box_rows"]),
            pending=[PromptedObject(**{k: tuple(map(tuple, v)) if k == "points" else (tuple(v) if isinstance(v, list) else v)
                                       for k, v in p.items()}) for p in state["pending"]],
            frame_index=state["frame_index"],
            frame_size=tuple(state["frame_size"]) if state["frame_size"] else None,
            video=VideoConfig(**state["video"]) if state.get("video") else None,
        )


def _cpu(v):
    return v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
