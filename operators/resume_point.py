"""What a stream must remember to carry on after its own process dies: its resume point.

A ``StreamActor`` takes a resume point right after its sinks were flushed, so every output up
to ``frame_index`` is durable. A stream resumed from it first takes back the Parquet files
written after it, then skips the frames it already handled (file sources) or continues the
frame numbering (live sources), keeps its durable track ids, the history of its live tracks and
their last boxes, and re-links the objects its fresh engine session re-acquires. The frames
after the resume point are handled again: the Parquet dataset holds each frame once, while
Kafka, which cannot take records back, may hold both versions of those frames (at least once;
consumers de-duplicate on ``event_id`` and on (stream, frame, track) keys).

("Checkpoint" in this project means model weights; a stream's saved position is a resume point.)
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

COUNTERS = ("frames_decoded", "frames_processed", "frames_dropped", "tracks", "records", "events", "reconnects",
            "engine_restarts")


class StreamState(enum.Enum):
    """Where a stream is in its life. The values are what files and metric labels show."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"  # a metric label only: a live source reconnects inside the decoder
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def ended(self) -> bool:
        return self in (StreamState.FINISHED, StreamState.FAILED, StreamState.STOPPED)


@dataclass(frozen=True)
class ResumePoint:
    stream_id: str
    frame_index: int  # the last frame handled (-1: none); its outputs and all before them were flushed
    pts_s: float
    tracks: dict[str, Any]  # StreamTracks.state_dict(), the relink memory (last boxes) included
    counters: dict[str, int] = field(default_factory=dict)  # the stream's totals (COUNTERS) at this point
    sink_sequence: dict[str, int] = field(default_factory=dict)  # Parquet rollback point (StreamOutputs.sequence)
    run_id: str | None = None  # the job run whose Parquet files sink_sequence counts
    state: StreamState = StreamState.RUNNING  # RUNNING while the stream goes on; its final state once it ended

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "state": self.state.value})

    @classmethod
    def from_json(cls, text: str) -> ResumePoint:
        data = json.loads(text)
        data["state"] = StreamState(data.get("state", StreamState.RUNNING.value))
        last_boxes = data.pop("last_boxes", None)
        if last_boxes is not None:  # written before the track table kept its own last boxes
            data["tracks"] = _with_last_boxes(data["tracks"], last_boxes)
        return cls(**data)


def _with_last_boxes(tracks: dict[str, Any], last_boxes: dict[str, list]) -> dict[str, Any]:
    """The older layout, where last boxes sat beside the table, as the table's own state."""
    boxes = {int(durable): box for durable, (_concept, box) in last_boxes.items()}
    return {**tracks, "tracks": [{**t, "last_box": boxes.get(t["durable_id"])} for t in tracks["tracks"]]}
