"""The Prometheus endpoint: what a scrape of a running job's driver returns."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from operators.resume_point import StreamState
from pipeline.engine_actor import EngineStats
from pipeline.metrics import JobMetrics
from pipeline.stream_stats import StreamCounters, StreamStats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_scrape_reports_streams_and_engines_and_close_frees_the_port():
    engine = EngineStats()
    for batch, seconds in [(1, 0.004), (4, 0.03), (4, 0.2)]:
        engine.observe(batch, seconds, objects=7)
    metrics = JobMetrics("lobby")
    cam1 = StreamStats("cam1", StreamState.RUNNING, StreamCounters(frames_processed=42, frames_dropped=3, restarts=1),
                       objects=5)
    cam2 = StreamStats("cam2", StreamState.FAILED, error="corrupt file")
    metrics.update({"cam1": cam1, "cam2": cam2}, {"engine-0": engine})
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    try:
        got = scrape(port)
    finally:
        metrics.close()
    cam = (("job", "lobby"), ("stream", "cam1"))
    assert got[("sam3_stream_frames_processed_total", cam)] == 42
    assert got[("sam3_stream_frames_dropped_total", cam)] == 3
    assert got[("sam3_stream_restarts_total", cam)] == 1
    assert got[("sam3_stream_objects", cam)] == 5
    assert got[("sam3_stream_state", (*cam[:1], ("state", "running"), cam[1]))] == 1
    assert got[("sam3_stream_state", (*cam[:1], ("state", "failed"), cam[1]))] == 0
    failed = (("job", "lobby"), ("stream", "cam2"))
    assert got[("sam3_stream_state", (*failed[:1], ("state", "failed"), failed[1]))] == 1
    assert got[("sam3_stream_state", (*failed[:1], ("state", "running"), failed[1]))] == 0
    assert got[("sam3_stream_frames_processed_total", failed)] == 0
    eng = (("engine", "engine-0"), ("job", "lobby"))
    assert got[("sam3_engine_batch_size_count", eng)] == 3
    assert got[("sam3_engine_batch_size_bucket", (*eng, ("le", "1")))] == 1
    assert got[("sam3_engine_step_seconds_bucket", (*eng, ("le", "0.05")))] == 2
    assert got[("sam3_engine_objects", eng)] == 7
    JobMetrics("again").serve(port, "127.0.0.1")  # the port is free again after close()
