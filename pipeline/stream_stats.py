"""What a stream actor reports to the driver: typed snapshots, never loose dicts.

``StreamCounters`` are the totals the actor keeps while it runs (its decode thread adds to
them too); ``StreamStats`` is a frozen snapshot of them with the stream's state, taken on
every poll and returned by ``run`` when the stream ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from operators.resume_point import COUNTERS, StreamState


@dataclass
class StreamCounters:
    frames_decoded: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    tracks: int = 0
    records: int = 0
    events: int = 0
    sink_errors: int = 0
    engine_restarts: int = 0
    reconnects: int = 0
    restarts: int = 0  # times this stream was resumed after its actor died

    def saved(self) -> dict[str, int]:
        """The totals a resume point carries (``COUNTERS``)."""
        return {name: getattr(self, name) for name in COUNTERS}

    @classmethod
    def from_saved(cls, saved: Mapping[str, int]) -> StreamCounters:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: int(value) for name, value in saved.items() if name in known})


@dataclass(frozen=True)
class StreamStats:
    stream_id: str
    state: StreamState = StreamState.STARTING
    counters: StreamCounters = field(default_factory=StreamCounters)  # a copy, never the actor's own
    objects: int = 0  # on the latest processed frame
    error: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # sink -> where its data is
    updated: float = 0.0  # time.time() of the snapshot

    @property
    def failed(self) -> bool:
        return self.state is StreamState.FAILED
