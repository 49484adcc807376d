"""A stream's sinks behind one call: Parquet and/or Kafka, as the job file asks."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import replace
from functools import partial

from pipeline.stream_stats import SinkCounts

logger = logging.getLogger(__name__)

KAFKA_FLUSH_S = 2.0  # a resume point waits this long for Kafka; what is still unacknowledged stays in its spool
KAFKA_CLOSE_S = 10.0  # at the stream's end: a broker that is down does not hold the job's stop for longer


def check_parquet_path(job, job_path: str) -> None:
    """Refuse, before anything starts, a job whose local Parquet path cannot be written: every stream
    would fail on its first flush. Object-store URIs are left to the sink, which reports them by path."""
    import tempfile
    from pathlib import Path

    spec = job.sinks.parquet
    if spec is None or "://" in str(spec.path):
        return
    path = Path(spec.path)
    created, missing = [], path
    while not missing.exists() and missing != missing.parent:  # the probe takes back the folders it made
        created.append(missing)
        missing = missing.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"{job_path}: sinks.parquet.path: cannot write to {path} ({e.strerror or e}); choose a "
                         "writable path or fix its permissions") from None
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


class StreamOutputs:
    """Writes one stream's observations and events to every configured sink.

    Parquet rows are flushed by size and age on every write (so readers see the data while the
    job runs); Kafka delivery failures surface on ``flush``/``close`` as ``SinkError``. Every
    failure is counted against the sink it came from (``counts``) and raised on unchanged.
    """

    def __init__(self, job, stream_id: str, kafka_servers: str | None, run: str | None = None):
        from operators.sinks.kafka_sink import KafkaSink
        from operators.sinks.parquet_sink import ParquetSink

        self.stream_id = stream_id
        self.locations: dict[str, str] = {}
        self._parquet = self._kafka = None
        self._errors: Counter[str] = Counter()  # by sink name
        pq_spec, kafka_spec = job.sinks.parquet, job.sinks.kafka
        if pq_spec is not None:
            self._parquet = ParquetSink(pq_spec.path, job.name, flush_rows=pq_spec.flush_rows,
                                        flush_seconds=pq_spec.flush_seconds, run=run)
            self.locations["parquet"] = str(pq_spec.path)
        if kafka_spec is not None and kafka_servers:
            self._kafka = KafkaSink(kafka_servers, kafka_spec.topic, kafka_spec.events_topic, client=dict(kafka_spec.client))
            self.locations["kafka"] = f"{kafka_servers} {kafka_spec.topic} / {kafka_spec.events_topic}"

    def _sinks(self):
        return [(name, sink) for name, sink in (("parquet", self._parquet), ("kafka", self._kafka)) if sink is not None]

    def _counted(self, name: str, call, *args) -> None:
        try:
            call(*args)
        except Exception:
            self._errors[name] += 1
            raise

    def write(self, observations, events) -> list:
        """Write to every sink; returns the sinks' health changes since the last call (``SinkHealth``,
        e.g. Kafka turned degraded), which the stream publishes as events."""
        for name, sink in self._sinks():
            if observations:
                self._counted(name, sink.write_tracks, observations)
            if events:
                self._counted(name, sink.write_events, events)
        if self._parquet is not None:
            self._counted("parquet", self._parquet.maybe_flush)
        return self._kafka.take_health_changes() if self._kafka is not None else []

    def counts(self) -> dict[str, SinkCounts]:
        """Per sink: records written for good (Parquet rows in files, Kafka records acknowledged) and failures."""
        written = {"parquet": lambda s: s.rows_written, "kafka": lambda s: s.sent}
        out = {name: SinkCounts(written[name](sink), self._errors[name]) for name, sink in self._sinks()}
        if self._kafka is not None:
            kafka = self._kafka
            out["kafka"] = replace(out["kafka"], dropped=kafka.dropped + kafka.errors, degraded=kafka.degraded,
                                   spool_peak_bytes=kafka.spool_peak_bytes)
        return out

    def sequence(self) -> dict[str, int]:
        """The Parquet rollback point of this stream (empty without a Parquet sink)."""
        return self._parquet.sequence(self.stream_id) if self._parquet is not None else {}

    def rollback(self, sequence: dict[str, int]) -> None:
        """Take back the Parquet files written after ``sequence``; Kafka records cannot be taken back."""
        if self._parquet is not None:
            self._parquet.rollback(self.stream_id, sequence)

    def flush(self) -> None:
        """Make everything written so far durable: Parquet files on disk; Kafka records acknowledged, as far as
        the broker answers within ``KAFKA_FLUSH_S`` (the rest waits in its capped spool)."""
        for name, sink in self._sinks():
            if name == "kafka":
                self._counted(name, partial(sink.flush, spooled_ok=True), 0.0 if sink.degraded else KAFKA_FLUSH_S)
            else:
                self._counted(name, sink.flush)

    def close(self) -> None:
        """Flush and close every sink; the first failure is raised after all were closed."""
        errors = []
        for name, sink in self._sinks():
            try:
                self._counted(name, sink.close, *((KAFKA_CLOSE_S,) if name == "kafka" else ()))
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
