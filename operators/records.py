"""The output contract: track observations and events, as Kafka JSON and as Arrow rows.

A ``TrackObservation`` is one object on one processed frame; an ``Event`` marks a moment in a
track's or a stream's life. Both carry ``schema_version`` in their JSON so that consumers can
evolve with the producer. ``event_id`` is derived from (stream, track, frame, type), so a
re-run or a retried delivery produces the same id and consumers can de-duplicate on it; a
``watchlist_changed`` / ``watchlist_rejected`` event's id also covers its ``details["change"]``
(two changes on one frame are two events).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1

EVENT_TYPES = (
    "track_start", "track_end", "stream_start", "stream_end", "stream_error", "stream_reconnect", "stream_resume",
    "watchlist_changed", "watchlist_rejected", "sink_degraded", "sink_recovered",
)
KEYED_BY_CHANGE = ("watchlist_changed", "watchlist_rejected")  # their id also covers details["change"]

# COCO compressed RLE of a mask, as every record carries it
MASK_TYPE = pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])

TRACK_SCHEMA = pa.schema([
    ("schema_version", pa.int16()),
    ("job", pa.string()),
    ("stream_id", pa.string()),
    ("source", pa.string()),
    ("frame_index", pa.int64()),
    ("pts_s", pa.float64()),
    ("ingest_ts", pa.timestamp("us", tz="UTC")),
    ("track_id", pa.int64()),
    ("concept", pa.string()),
    ("score", pa.float32()),
    ("box_xyxy", pa.list_(pa.float32(), 4)),
    ("mask", MASK_TYPE),
    ("area_px", pa.int64()),
    ("model", pa.string()),
])

EVENT_SCHEMA = pa.schema([
    ("schema_version", pa.int16()),
    ("event_id", pa.string()),
    ("type", pa.string()),
    ("job", pa.string()),
    ("stream_id", pa.string()),
    ("track_id", pa.int64()),
    ("concept", pa.string()),
    ("frame_index", pa.int64()),
    ("pts_s", pa.float64()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("duration_s", pa.float64()),
    ("max_score", pa.float32()),
    ("best_frame_index", pa.int64()),
    ("error", pa.string()),
    ("details", pa.string()),  # JSON of any further type-specific fields
])


@dataclass(frozen=True)
class TrackObservation:
    job: str
    stream_id: str
    source: str
    frame_index: int
    pts_s: float
    ingest_ts: Any  # datetime (UTC)
    track_id: int
    concept: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask: dict  # COCO compressed RLE: {"size": [h, w], "counts": str}
    area_px: int
    model: str
    schema_version: int = SCHEMA_VERSION

    def to_row(self) -> dict[str, Any]:
        row = _fields(self)
        row["box_xyxy"] = list(self.box_xyxy)
        return row

    def to_json(self) -> bytes:
        row = self.to_row()
        row["ingest_ts"] = self.ingest_ts.isoformat()
        return json.dumps(row, separators=(",", ":")).encode()


def event_id(stream_id: str, track_id: int | None, frame_index: int | None, type_: str, change: Any = None) -> str:
    """Deterministic id of an event: the same (stream, track, frame, type[, change]) always gives the same id."""
    key = f"{stream_id}\x1f{track_id}\x1f{frame_index}\x1f{type_}"
    if change is not None:
        key += "\x1f" + json.dumps(change, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Event:
    type: str
    job: str
    stream_id: str
    ts: Any  # datetime (UTC)
    track_id: int | None = None
    concept: str | None = None
    frame_index: int | None = None
    pts_s: float | None = None
    duration_s: float | None = None
    max_score: float | None = None
    best_frame_index: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; known: {', '.join(EVENT_TYPES)}")

    @property
    def event_id(self) -> str:
        change = self.details.get("change") if self.type in KEYED_BY_CHANGE else None
        return event_id(self.stream_id, self.track_id, self.frame_index, self.type, change)

    def to_row(self) -> dict[str, Any]:
        row = _fields(self)
        row["event_id"] = self.event_id
        row["details"] = json.dumps(self.details, sort_keys=True) if self.details else None
        return row

    def to_json(self) -> bytes:
        row = _fields(self)
        details = row.pop("details")
        row.update(details)
        row["event_id"] = self.event_id
        row["ts"] = self.ts.isoformat()
        return json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":")).encode()


def _fields(record) -> dict[str, Any]:
    """A shallow field dict (``dataclasses.asdict`` deep-copies masks and costs 4x more per record)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}
