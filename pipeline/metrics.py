"""Prometheus metrics of a running job, served by the driver on ``metrics.port``.

Actors keep plain counters (``StreamStats``, ``EngineStats``); the driver polls them and this
collector turns the latest snapshot into metric families at scrape time, so nothing in the
actors depends on Prometheus. A resumed stream reports its counters from its resume point on (a
counter that goes back is a reset to Prometheus); its latency histogram and per-sink counts
start again from zero.

``sam3_engine_gpu_memory_bytes`` has samples only for engines on a CUDA device (on CPU there is
no allocator to read). ``sam3_engine_restarts_total`` counts the restarts this collector saw: an
engine whose ``started`` time changed between two polls was rebuilt by Ray (two restarts within
one poll count once). ``sam3_engine_dropped_detections_total{stream}`` counts the new detections an
engine dropped at ``engine.max_objects_per_stream`` (the session logs them at most once a minute).
The rule file and dashboard under ``deploy/`` use these names.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from operators.resume_point import StreamState
from pipeline.engine_actor import BATCH_SIZE_BUCKETS, STEP_SECONDS_BUCKETS, EngineStats
from pipeline.stream_stats import LATENCY_SECONDS_BUCKETS, StreamStats

logger = logging.getLogger(__name__)

STREAM_COUNTERS = {  # StreamCounters field -> what it counts
    "frames_decoded": "Frames decoded from the source",
    "frames_processed": "Frames processed by the engine",
    "frames_dropped": "Live frames dropped because the engine fell behind",
    "records": "Track observations published",
    "events": "Events published",
    "sink_errors": "Sink write failures",
    "engine_restarts": "Engine failures the stream recovered from",
    "reconnects": "Source reconnects",
    "restarts": "Times the stream's actor died and was resumed from its resume point",
}


def serve_job_metrics(metrics: JobMetrics, job, job_path: str, cleanup) -> None:
    """Serve ``metrics`` on the job's ``metrics.port`` (none: not served) until ``cleanup`` (an ExitStack) closes."""
    if not job.metrics.port:
        return
    try:
        metrics.serve(job.metrics.port, job.metrics.host)
    except OSError as e:
        raise ValueError(f"{job_path}: metrics.port: cannot serve on {job.metrics.host}:{job.metrics.port} "
                         f"({e}); choose a free port, or metrics.port: null to turn metrics off") from e
    cleanup.callback(metrics.close)


class JobMetrics:
    """Holds the latest stream and engine snapshots and exposes them to Prometheus."""

    def __init__(self, job: str):
        self.job = job
        self._lock = threading.Lock()
        self._streams: dict[str, StreamStats] = {}
        self._engines: dict[str, EngineStats] = {}
        self._engine_restarts: Counter[str] = Counter()
        self._server = None

    def update(self, streams: dict[str, StreamStats], engines: dict[str, EngineStats]) -> None:
        with self._lock:
            for name, stats in engines.items():
                seen = self._engines.get(name)
                if seen is not None and seen.started != stats.started:
                    self._engine_restarts[name] += 1
            self._streams.update(streams)
            self._engines.update(engines)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``host:port`` from a registry of this job's own."""
        registry = CollectorRegistry()
        registry.register(self)
        self._server, _ = start_http_server(port, addr=host, registry=registry)
        logger.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        """Stop serving (the port is free again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def describe(self):
        return []

    def collect(self):
        with self._lock:
            streams, engines, restarts = dict(self._streams), dict(self._engines), Counter(self._engine_restarts)
        yield from self._stream_families(streams)
        yield from self._sink_families(streams)
        yield from self._engine_families(engines, restarts)

    def _stream_families(self, streams: dict[str, StreamStats]):
        for key, doc in STREAM_COUNTERS.items():
            fam = CounterMetricFamily(f"sam3_stream_{key}", doc, labels=["job", "stream"])
            for sid, s in streams.items():
                fam.add_metric([self.job, sid], getattr(s.counters, key))
            yield fam
        labels = ["job", "stream"]
        objects = GaugeMetricFamily("sam3_stream_objects", "Objects on the stream's latest frame", labels=labels)
        state = GaugeMetricFamily("sam3_stream_state", "1 for the stream's current state", labels=[*labels, "state"])
        target = GaugeMetricFamily("sam3_stream_target_fps", "Configured sampling rate (absent: every frame)",
                                   labels=labels)
        latency = HistogramMetricFamily("sam3_stream_latency_seconds",
                                        "From a frame decoded to its records handed to the sinks", labels=labels)
        for sid, s in streams.items():
            objects.add_metric([self.job, sid], s.objects)
            for st in StreamState:
                state.add_metric([self.job, sid, st.value], 1.0 if s.state is st else 0.0)
            if s.target_fps:
                target.add_metric([self.job, sid], s.target_fps)
            latency.add_metric([self.job, sid], _buckets(LATENCY_SECONDS_BUCKETS, s.latency.buckets),
                               sum_value=s.latency.seconds_sum)
        yield from (objects, state, target, latency)

    def _sink_families(self, streams: dict[str, StreamStats]):
        labels = ["job", "stream", "sink"]
        records = CounterMetricFamily("sam3_sink_records", "Records written for good (Parquet rows in files, "
                                      "Kafka records acknowledged)", labels=labels)
        errors = CounterMetricFamily("sam3_sink_errors", "Sink writes, flushes or closes that failed", labels=labels)
        dropped = CounterMetricFamily("sam3_sink_dropped", "Records the sink gave up on: refused by the full Kafka "
                                      "spool, or failed for good (Parquet keeps them)", labels=labels)
        degraded = GaugeMetricFamily("sam3_sink_degraded", "1 while the sink drops or fails records", labels=labels)
        for sid, s in streams.items():
            for sink, counts in s.sinks.items():
                records.add_metric([self.job, sid, sink], counts.records)
                errors.add_metric([self.job, sid, sink], counts.errors)
                dropped.add_metric([self.job, sid, sink], counts.dropped)
                degraded.add_metric([self.job, sid, sink], 1.0 if counts.degraded else 0.0)
        yield from (records, errors, dropped, degraded)

    def _engine_families(self, engines: dict[str, EngineStats], restarts: Counter[str]):
        labels = ["job", "engine"]
        batch = HistogramMetricFamily("sam3_engine_batch_size", "Frames per engine step", labels=labels)
        step = HistogramMetricFamily("sam3_engine_step_seconds", "Engine step latency", labels=labels)
        tracked = GaugeMetricFamily("sam3_engine_objects", "Objects tracked by the engine", labels=labels)
        restarted = CounterMetricFamily("sam3_engine_restarts", "Times Ray rebuilt the engine actor", labels=labels)
        memory = GaugeMetricFamily("sam3_engine_gpu_memory_bytes", "CUDA memory held by torch (absent on CPU)",
                                   labels=[*labels, "kind"])
        dropped = CounterMetricFamily("sam3_engine_dropped_detections", "New detections dropped because the stream "
                                      "tracked engine.max_objects_per_stream objects already", labels=[*labels, "stream"])
        for name, e in engines.items():
            batch.add_metric([self.job, name], _buckets(BATCH_SIZE_BUCKETS, e.batch_size_buckets), sum_value=e.frames)
            step.add_metric([self.job, name], _buckets(STEP_SECONDS_BUCKETS, e.step_seconds_buckets),
                            sum_value=e.step_seconds_sum)
            tracked.add_metric([self.job, name], e.objects)
            restarted.add_metric([self.job, name], restarts[name])
            if e.gpu_memory_allocated_bytes is not None:
                memory.add_metric([self.job, name, "allocated"], e.gpu_memory_allocated_bytes)
                memory.add_metric([self.job, name, "reserved"], e.gpu_memory_reserved_bytes)
            for sid, count in sorted(e.dropped_detections.items()):
                dropped.add_metric([self.job, name, sid], count)
        yield from (batch, step, tracked, restarted, memory, dropped)


def _buckets(bounds, counts) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, as Prometheus histograms want them."""
    out, total = [], 0
    for bound, count in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        total += count
        out.append((bound, total))
    return out
