"""What a stream actor reports to the driver: typed snapshots, never loose dicts.

``StreamCounters`` are the totals the actor keeps while it runs (its decode thread adds to
them too); ``StreamStats`` is a frozen snapshot of them with the stream's state, taken on
every poll and returned by ``run`` when the stream ends. ``FrameLatency`` keeps the stream's
end-to-end latency as histogram bucket counts and ``SinkCounts`` what each sink wrote, so the
driver's Prometheus collector needs nothing from the actor but these snapshots.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from operators.resume_point import COUNTERS, StreamState

# A frame's time from decode to its records handed to the sinks: a few ms on a GPU, seconds when
# the engine falls behind (up to the in-flight window of frames waiting).
LATENCY_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
class FrameLatency:
    """A latency histogram as per-bucket counts (``LATENCY_SECONDS_BUCKETS``, the last one +Inf)."""

    buckets: tuple[int, ...] = (0,) * (len(LATENCY_SECONDS_BUCKETS) + 1)
    seconds_sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def observe(self, seconds: float) -> FrameLatency:
        """This histogram with one more observation (snapshots stay immutable)."""
        index = next((i for i, bound in enumerate(LATENCY_SECONDS_BUCKETS) if seconds <= bound),
                     len(LATENCY_SECONDS_BUCKETS))
        buckets = tuple(n + (i == index) for i, n in enumerate(self.buckets))
        return FrameLatency(buckets, self.seconds_sum + seconds)


class ArrivalTimes:
    """When each frame finished decoding, by frame index, until its records are published.

    ``stamp`` runs on the decode thread and ``latency`` on the actor's own; a deque is safe for
    one appender and one popper. Frames dropped before the engine saw them are passed over.
    """

    def __init__(self) -> None:
        self._arrived: collections.deque[tuple[int, float]] = collections.deque()

    def stamp(self, frames: Iterable) -> Iterator:
        for frame in frames:
            self._arrived.append((frame.index, time.monotonic()))
            yield frame

    def latency(self, index: int) -> float | None:
        """Seconds since frame ``index`` arrived; None when it was not stamped."""
        while self._arrived and self._arrived[0][0] < index:
            self._arrived.popleft()  # dropped live frames, never handled
        if not self._arrived or self._arrived[0][0] != index:
            return None
        return time.monotonic() - self._arrived.popleft()[1]


@dataclass(frozen=True)
class SinkCounts:
    records: int = 0  # written for good: Parquet rows in files, Kafka records acknowledged
    errors: int = 0  # sink calls (write, flush, close) that failed
    dropped: int = 0  # records the sink gave up on: refused by Kafka's full spool, or failed for good
    degraded: bool = False  # dropping or failing records now (Kafka: see operators/sinks/kafka_sink.py)
    spool_peak_bytes: int = 0  # the most the Kafka spool held (at most its cap)


@dataclass(frozen=True)
class StreamStats:
    stream_id: str
    state: StreamState = StreamState.STARTING
    counters: StreamCounters = field(default_factory=StreamCounters)  # a copy, never the actor's own
    objects: int = 0  # on the latest processed frame
    error: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # sink -> where its data is
    updated: float = 0.0  # time.time() of the snapshot
    target_fps: float | None = None  # the stream's sampling rate; None when every frame is processed
    latency: FrameLatency = field(default_factory=FrameLatency)  # frame decoded -> its records published
    sinks: Mapping[str, SinkCounts] = field(default_factory=dict)  # by sink name (parquet, kafka)

    @property
    def failed(self) -> bool:
        return self.state is StreamState.FAILED
