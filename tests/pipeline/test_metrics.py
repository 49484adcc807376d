"""The Prometheus endpoint: what a scrape of a running job's driver returns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from operators.resume_point import StreamState
from operators.sinks.parquet_sink import open_dataset
from operators.synthetic import write_synthetic_video
from pipeline.driver import JobActors, JobResult
from pipeline.engine_actor import EngineStats, gpu_memory
from pipeline.metrics import JobMetrics
from pipeline.stream_stats import SinkCounts, StreamCounters, StreamStats
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import BackgroundJob, wait_for
from tests.net import free_port, scrape, scrape_served

# Only ends a wait that would otherwise hang; the job's own reports decide when to go on.
SHORT_FPS = 5.0
JOB = """
name: watch
model: {{checkpoint: {checkpoint}, device: cpu}}
engine: {{replicas: 1, max_batch: 2, max_wait_ms: 10, hotstart: "off"}}
watchlists:
  shapes:
    - {{concept: red square, threshold: 0.1}}
    - {{concept: green disc, threshold: 0.1}}
streams:
  - {{id: short, source: '{short}', watchlist: shapes, fps: {fps}}}
  - {{id: looping, source: '{looping}', watchlist: shapes, loop: true}}
sinks:
  parquet: {{path: '{out}', flush_rows: 20, flush_seconds: 1}}
  kafka: {{bootstrap_servers: embedded, topic: tracks, events_topic: events}}
metrics: {{port: {port}, host: 127.0.0.1}}
"""
ENGINE = (("engine", "engine-0"), ("job", "watch"))






def _stream(sid: str) -> tuple:
    return (("job", "watch"), ("stream", sid))


def _state_key(sid: str, state: str) -> tuple:
    return ("sam3_stream_state", (("job", "watch"), ("state", state), ("stream", sid)))


@dataclass
class RunningJob:
    port: int
    background: BackgroundJob
    out: Path  # the Parquet dataset

    @property
    def actors(self) -> JobActors:
        return self.background.actors

    @property
    def result(self) -> JobResult:
        return self.background.result()


@contextlib.contextmanager
def running_job(tmp_path: Path):
    """A real job serving metrics: stream ``short`` (a 2 s file sampled at ``SHORT_FPS``) ends by
    itself, stream ``looping`` replays a file until the block ends and stops it."""
    media = tmp_path / "media"
    media.mkdir()
    short = write_synthetic_video(media / "short.mp4", frames=20, size=(160, 120), fps=10)
    looping = write_synthetic_video(media / "loop.mp4", frames=10, size=(160, 120), fps=10)
    port = free_port()
    path = tmp_path / "watch.yaml"
    path.write_text(JOB.format(checkpoint=write_random_checkpoint(media / "tiny"), short=short, looping=looping,
                               fps=SHORT_FPS, out=tmp_path / "out", port=port))
    background = BackgroundJob(path)
    background.start()
    try:
        yield RunningJob(port, background, tmp_path / "out")
    finally:
        background.stop_streams()
        background.join()


def wait_for_scrape(port: int, condition: Callable[[dict], object], what: str) -> dict:
    """Scrape until ``condition`` holds for what the job serves; that scrape."""
    def satisfied() -> dict | None:
        got = scrape(port)
        return got if condition(got) else None

    return wait_for(satisfied, what, interval_s=0.2)


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


def test_collector_counts_an_engine_rebuilt_between_polls_and_shows_gpu_memory_only_on_cuda():
    metrics = JobMetrics("lobby")
    first = EngineStats(started=100.0)
    metrics.update({}, {"engine-0": first, "engine-1": EngineStats(started=50.0)})
    metrics.update({}, {"engine-0": first})  # the same actor polled again, engine-1 busy: no restart
    on_gpu = EngineStats(started=200.0, gpu_memory_allocated_bytes=3 << 20, gpu_memory_reserved_bytes=8 << 20)
    metrics.update({}, {"engine-0": on_gpu})
    got = scrape_served(metrics)
    eng0, eng1 = (("engine", "engine-0"), ("job", "lobby")), (("engine", "engine-1"), ("job", "lobby"))
    assert got[("sam3_engine_restarts_total", eng0)] == 1
    assert got[("sam3_engine_restarts_total", eng1)] == 0
    assert got[("sam3_engine_gpu_memory_bytes", (*eng0, ("kind", "allocated")))] == 3 << 20
    assert got[("sam3_engine_gpu_memory_bytes", (*eng0, ("kind", "reserved")))] == 8 << 20
    assert not any(name == "sam3_engine_gpu_memory_bytes" and ("engine", "engine-1") in labels
                   for name, labels in got), "an engine on CPU has no GPU memory to report"
    assert gpu_memory("cpu") is None


def test_a_running_job_serves_latency_target_fps_sink_counts_and_engine_restarts(ray_session, tmp_path):
    with running_job(tmp_path) as job:
        got = wait_for_scrape(job.port, lambda g: g.get(_state_key("short", "finished")) == 1, "stream short finished")
        ray_session.kill(job.actors.engines["engine-0"], no_restart=False)
        restarted = wait_for_scrape(job.port, lambda g: g.get(("sam3_engine_restarts_total", ENGINE)) and
                                    g.get(("sam3_stream_engine_restarts_total", _stream("looping"))),
                                    "the engine's restart seen by the collector and by the looping stream")
    short = _stream("short")
    processed = got[("sam3_stream_frames_processed_total", short)]
    assert processed == job.result.streams["short"].counters.frames_processed > 0
    # every processed frame's latency was observed once, from its decode to its records published
    assert got[("sam3_stream_latency_seconds_count", short)] == processed
    assert got[("sam3_stream_latency_seconds_bucket", (short[0], ("le", "+Inf"), short[1]))] == processed
    assert got[("sam3_stream_latency_seconds_sum", short)] > 0
    assert got[("sam3_stream_target_fps", short)] == SHORT_FPS
    assert ("sam3_stream_target_fps", _stream("looping")) not in got  # every frame: no target
    published = got[("sam3_stream_records_total", short)] + got[("sam3_stream_events_total", short)]
    tracks = open_dataset(job.out, "tracks").to_table(filter=ds.field("stream_id") == "short").num_rows
    events = open_dataset(job.out, "events").to_table(filter=ds.field("stream_id") == "short").num_rows
    assert tracks > 0 and got[("sam3_sink_records_total", (*short[:1], ("sink", "parquet"), short[1]))] == \
        tracks + events == published
    assert got[("sam3_sink_records_total", (*short[:1], ("sink", "kafka"), short[1]))] == published
    for sink in ("parquet", "kafka"):
        assert got[("sam3_sink_errors_total", (*short[:1], ("sink", sink), short[1]))] == 0
    assert restarted[("sam3_engine_restarts_total", ENGINE)] == 1
    assert not any(name == "sam3_engine_gpu_memory_bytes" for name, _ in got), "the job ran on CPU"


def test_stream_outputs_count_a_failing_sink_against_that_sink(tmp_path):
    from datetime import UTC, datetime

    from operators.records import Event
    from operators.sinks import SinkError
    from pipeline.jobspec import parse_job
    from pipeline.outputs import StreamOutputs

    out = tmp_path / "out"
    job = parse_job(f"""
name: sinks
model: {{checkpoint: facebook/sam3, device: cpu}}
watchlists: {{shapes: [{{concept: red square}}]}}
streams: [{{id: cam, source: '{tmp_path / "v.mp4"}', watchlist: shapes}}]
sinks: {{parquet: {{path: '{out}', flush_rows: 1}}}}
metrics: {{port: null}}
""", base_dir=tmp_path)
    outputs = StreamOutputs(job, "cam", kafka_servers=None, run="r1")
    out.rmdir()
    out.write_text("not a directory")  # no Parquet file can be written under it any more
    event = Event("stream_start", "sinks", "cam", datetime.now(UTC), frame_index=0)
    assert outputs.counts() == {"parquet": SinkCounts(records=0, errors=0)}
    with pytest.raises(SinkError):
        outputs.write([], [event])
    assert outputs.counts() == {"parquet": SinkCounts(records=0, errors=1)}
