"""A real job whose Kafka broker freezes past the sink's spool: the stream goes on, the spool stays at its cap,
records past it are dropped and counted, ``sink_degraded`` then ``sink_recovered`` reach Parquet (and Kafka
once it is back), the metrics say so, and Parquet keeps every record throughout."""

from __future__ import annotations

import os
import signal

import pytest

from operators.broker import EmbeddedBroker
from operators.sinks.parquet_sink import open_dataset
from operators.synthetic import write_synthetic_video
from pipeline.metrics import JobMetrics
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import BackgroundJob, wait_for
from tests.job_files import streams_from, write_job

CAP = 8000  # bytes of Kafka spool: a few frames' records
SINK_EVENT_BYTES = 1000  # a sink_degraded event goes past a full spool (so Kafka gets it once it is back)
RULES = (("red square", 0.05), ("green disc", 0.05))


@pytest.fixture
def broker():
    with EmbeddedBroker() as b:
        b.create_topics(["outage.tracks", "outage.events"])
        yield b


def test_a_broker_frozen_past_the_spool_degrades_kafka_and_parquet_keeps_every_record(ray_session, broker, tmp_path):
    ray = ray_session
    video = write_synthetic_video(tmp_path / "v.mp4", frames=20, size=(96, 72), fps=10)
    job = write_job(tmp_path / "job.yaml", name="outage", checkpoint=write_random_checkpoint(tmp_path / "tiny"),
                    streams=streams_from({"cam": video}, loop=True), rules=RULES,
                    parquet=tmp_path / "out", parquet_flush_rows=50, kafka=broker.bootstrap_servers,
                    extra={"sinks": {"kafka": {"topic": "outage.tracks", "events_topic": "outage.events",
                                               "client": {"buffer_memory": CAP, "max_block_ms": 1000}}}})
    running = BackgroundJob(job)
    stream = running.start().streams["cam"]

    def kafka():
        return ray.get(stream.get_stats.remote()).sinks.get("kafka")

    try:
        wait_for(lambda: (k := kafka()) is not None and k.records > 0, "records delivered to Kafka")
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            degraded = wait_for(lambda: (k := kafka()).degraded and k.dropped > 0 and k, "the Kafka sink degraded")
            processed = ray.get(stream.get_stats.remote()).counters.frames_processed
            wait_for(lambda: ray.get(stream.get_stats.remote()).counters.frames_processed > processed + 5,
                     "frames going on while Kafka is frozen")  # the stream is not blocked
            # memory bounded, however long the freeze: the cap, plus the sink's own small sink_* events
            assert kafka().spool_peak_bytes <= CAP + SINK_EVENT_BYTES
            metrics = JobMetrics("outage")
            metrics.update({"cam": ray.get(stream.get_stats.remote())}, {})
            samples = {(s.name, s.labels["sink"]): s.value for f in metrics.collect() for s in f.samples
                       if s.name in ("sam3_sink_degraded", "sam3_sink_dropped_total")}
            assert samples[("sam3_sink_degraded", "kafka")] == 1 and samples[("sam3_sink_dropped_total", "kafka")] > 0
            assert samples[("sam3_sink_degraded", "parquet")] == 0
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        wait_for(lambda: not kafka().degraded, "the Kafka sink recovered")
    finally:
        running.stop_streams()
        running.join()
    result = running.result()
    stats = result.streams["cam"]
    assert result.exit_code == 0 and stats.sinks["kafka"].dropped >= degraded.dropped > 0, stats
    events = open_dataset(tmp_path / "out", "events").to_table().to_pylist()
    types = [e["type"] for e in events]
    assert "sink_degraded" in types and "sink_recovered" in types
    assert types.index("sink_degraded") < types.index("sink_recovered")
    tracks = open_dataset(tmp_path / "out", "tracks").to_table().to_pylist()
    assert len(tracks) == stats.counters.records  # Parquet kept every record, dropped from Kafka or not
    assert stats.sinks["kafka"].records < stats.counters.records + stats.counters.events
