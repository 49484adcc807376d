"""What a stream must remember to carry on after its own process dies.

A ``StreamActor`` takes a checkpoint right after its sinks were flushed, so every output up to
``frame_index`` is durable. A stream restored from it
first takes back the Parquet files written after it, then skips the frames it already handled
(file sources) or continues the frame numbering (live sources), keeps its durable track ids and
the history of its live tracks, and re-links the objects its fresh engine session re-acquires.
The frames after the checkpoint are handled again: the Parquet dataset holds each frame once,
while Kafka, which cannot take records back, may hold both versions of those frames (at least
once; consumers de-duplicate on ``event_id`` and on (stream, frame, track) keys).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

COUNTERS = ("frames_decoded", "frames_processed", "frames_dropped", "tracks", "records", "events", "reconnects",
            "engine_restarts")


@dataclass(frozen=True)
class StreamCheckpoint:
    stream_id: str
    frame_index: int  # the last frame handled (-1: none); its outputs and all before them were flushed
    pts_s: float
    tracks: dict[str, Any]  # StreamTracks.state_dict()
    last_boxes: dict[int, tuple[str, tuple[float, float, float, float]]]  # durable id -> (concept, box)
    counters: dict[str, int] = field(default_factory=dict)  # the stream's totals at the checkpoint
    sink_sequence: dict[str, int] = field(default_factory=dict)  # Parquet rollback point (StreamOutputs.sequence)
    run_id: str | None = None  # the job run whose Parquet files sink_sequence counts
    state: str = "running"  # "running" while the stream goes on; its final state once it ended

    def to_json(self) -> str:
        data = asdict(self)
        data["last_boxes"] = {str(k): [concept, list(box)] for k, (concept, box) in self.last_boxes.items()}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StreamCheckpoint:
        data = json.loads(text)
        data["last_boxes"] = {int(k): (concept, tuple(box)) for k, (concept, box) in data["last_boxes"].items()}
        return cls(**data)
