"""The whole pipeline on real components: local Ray, the embedded Kafka-compatible broker,
PyAV decoding, an RTSP server on loopback, and the tiny random checkpoint."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from kafka import KafkaConsumer

from operators.broker import EmbeddedBroker
from operators.resume_point import StreamState
from operators.synthetic import write_synthetic_video
from pipeline.cli import main
from pipeline.driver import run_job
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S, wait_for
from tests.job_files import streams_from, write_job
from tests.rtsp_server import rtsp_server

RULES = (("red square", 0.1), ("green disc", 0.1))
# Every step of these tests is triggered by what the job reports (frames processed, resume
# points, reconnects), never by how long it has run; HANG_GUARD_S only ends a wait that would hang.


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    a = write_synthetic_video(root / "a.mp4", frames=12, size=(160, 120), fps=10)
    b = write_synthetic_video(root / "b.mkv", frames=16, size=(160, 120), fps=10)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    long = write_synthetic_video(root / "long.mp4", frames=60, size=(160, 120), fps=10)
    ckpt = write_random_checkpoint(root / "tiny")
    return {"a": a, "b": b, "corrupt": corrupt, "long": long, "ckpt": ckpt}


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        yield b


def _job(tmp_path, media, broker, name, streams: dict[str, str], out: str | None = "out", max_batch: int = 4,
         stream_options: dict | None = None, **options) -> Path:
    """A job with Parquet under ``tmp_path / out`` (none if ``out`` is None) and Kafka on ``broker``."""
    return write_job(tmp_path / f"{name}.yaml", checkpoint=media["ckpt"], rules=RULES, max_batch=max_batch,
                     streams=streams_from(streams, **(stream_options or {})), kafka=broker.bootstrap_servers,
                     parquet=None if out is None else tmp_path / out, parquet_flush_rows=50, **options)


def _consume(broker, topic, expected: int) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=3000)
    messages = []
    deadline = time.monotonic() + HANG_GUARD_S
    while len(messages) < expected and time.monotonic() < deadline:
        messages.extend(consumer)
    consumer.close()
    return messages




def _stats(stream):
    import ray

    return ray.get(stream.get_stats.remote())


def _processed_at_least(stream, frames: int, what: str) -> int:
    """Wait until ``stream`` has processed ``frames`` frames; the count it had then."""
    return wait_for(lambda: (n := _stats(stream).counters.frames_processed) >= frames and n, what)


def _in_background(action, errors: list) -> None:
    """Run ``action`` beside the job; what it raises lands in ``errors`` for the test to show."""
    def run() -> None:
        try:
            action()
        except BaseException as e:
            errors.append(e)

    threading.Thread(target=run, daemon=True).start()


# One stream per engine step here: which streams share a step depends on timing, and a batch of
# another size rounds differently; the random model scores every query alike, so such rounding
# can flip its association decisions and with them the events. The engine's batched-equals-
# unbatched property is tested on its own (tests/test_video_engine.py).

def test_two_files_and_a_corrupt_one(ray_session, media, broker, tmp_path):
    job = _job(tmp_path, media, broker, "e2e", {"cam-a": media["a"], "cam-b": media["b"], "bad": media["corrupt"]},
               max_batch=1)
    result = run_job(str(job), show_progress=False)
    assert result.exit_code == 3
    streams = result.streams
    assert streams["bad"].state is StreamState.FAILED and streams["bad"].error
    assert streams["cam-a"].state is StreamState.FINISHED and streams["cam-a"].counters.frames_processed == 12
    assert streams["cam-b"].state is StreamState.FINISHED and streams["cam-b"].counters.frames_processed == 16

    tracks = ds.dataset(tmp_path / "out" / "tracks", partitioning="hive").to_table().to_pylist()
    events = ds.dataset(tmp_path / "out" / "events", partitioning="hive").to_table().to_pylist()
    assert tracks, "the random model at threshold 0.1 should publish tracks"
    kafka_tracks = _consume(broker, "tracks", len(tracks))
    kafka_events = _consume(broker, "events", len(events))
    # what a Kafka consumer reads equals the Parquet rows
    key = lambda r: (str(r["stream_id"]), r["frame_index"], r["track_id"])  # noqa: E731
    from_kafka = sorted((json.loads(m.value) for m in kafka_tracks), key=key)
    assert [key(r) for r in from_kafka] == sorted(key(r) for r in tracks)
    assert all(m.key.decode() == json.loads(m.value)["stream_id"] for m in kafka_tracks)
    by_key = {key(r): r for r in tracks}
    for r in from_kafka:
        assert r["mask"] == by_key[key(r)]["mask"] and r["schema_version"] == 1
    # events: unique ids, a stream_error for the corrupt file, start/end for the good ones
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert {json.loads(m.value)["event_id"] for m in kafka_events} == set(ids)
    types = {(str(e["stream_id"]), e["type"]) for e in events}
    assert ("bad", "stream_error") in types
    assert {("cam-a", "stream_start"), ("cam-a", "stream_end"), ("cam-b", "stream_end")} <= types
    assert ("cam-a", "track_start") in types and ("cam-a", "track_end") in types

    # a re-run produces the same events, ids included (consumers de-duplicate on them)
    rerun = _job(tmp_path, media, broker, "e2e", {"cam-a": media["a"], "cam-b": media["b"], "bad": media["corrupt"]},
                 out="out2")
    assert run_job(str(rerun), show_progress=False).exit_code == 3
    again = ds.dataset(tmp_path / "out2" / "events", partitioning="hive").to_table().to_pylist()
    assert sorted(e["event_id"] for e in again) == sorted(ids)
    tracks_again = ds.dataset(tmp_path / "out2" / "tracks", partitioning="hive").to_table().to_pylist()
    assert sorted((key(r), r["mask"]["counts"]) for r in tracks_again) == sorted((key(r), r["mask"]["counts"]) for r in tracks)


def test_engine_killed_mid_run(ray_session, media, broker, tmp_path):
    import ray

    job = _job(tmp_path, media, broker, "failover", {"long": media["long"]})
    killed_at, errors = [], []

    def kill_mid_run(actors):
        def kill():
            killed_at.append(_processed_at_least(actors.streams["long"], 10, "frames before the engine kill"))
            ray.kill(actors.engines["engine-0"], no_restart=False)

        _in_background(kill, errors)

    result = run_job(str(job), show_progress=False, on_started=kill_mid_run)
    assert not errors and killed_at and 10 <= killed_at[0] < 60, (errors, killed_at)  # killed mid-run
    stats = result.streams["long"]
    assert result.exit_code == 0, stats
    assert stats.counters.engine_restarts >= 1
    assert stats.counters.frames_processed == 60  # every frame made it, the ones in flight were re-sent
    tracks = ds.dataset(tmp_path / "out" / "tracks", partitioning="hive").to_table().to_pylist()
    frames = sorted({r["frame_index"] for r in tracks})
    assert frames and frames[-1] >= 50  # tracks continue to the end after the restart
    starts = [r["track_id"] for r in ds.dataset(tmp_path / "out" / "events", partitioning="hive").to_table().to_pylist()
              if r["type"] == "track_start"]
    assert len(starts) == len(set(starts))  # durable ids never reused across the restart


def test_stream_actor_killed_mid_run_resumes_from_its_checkpoint(ray_session, media, broker, tmp_path):
    import ray

    job = _job(tmp_path, media, broker, "resume", {"long": media["long"]})
    seen, errors = [], []  # (resume point the driver held, the stream's latest when killed)
    held_file = tmp_path / "out" / "_checkpoints" / "resume" / "long.json"

    def kill_after_a_checkpoint(actors):
        def kill():
            stream = actors.streams["long"]
            wait_for(held_file.exists, "resume point held by the driver")  # it writes each one it holds
            held = json.loads(held_file.read_text())["frame_index"]
            latest = ray.get(stream.resume_point.remote())
            ray.kill(stream, no_restart=False)
            seen.append((held, latest.frame_index))

        _in_background(kill, errors)

    result = run_job(str(job), show_progress=False, on_started=kill_after_a_checkpoint)
    stats = result.streams["long"]
    assert result.exit_code == 0, stats
    assert not errors and seen and 0 <= seen[0][0] <= seen[0][1] < 59, (errors, seen)
    assert stats.counters.restarts == 1 and stats.state is StreamState.FINISHED
    assert stats.counters.frames_processed == 60  # counted once: up to the checkpoint, then from there on
    events = ds.dataset(tmp_path / "out" / "events", partitioning="hive").to_table().to_pylist()
    resumes = [e for e in events if e["type"] == "stream_resume"]
    assert len(resumes) == 1 and seen[0][0] <= resumes[0]["frame_index"] <= seen[0][1]
    assert [e["type"] for e in events].count("stream_end") == 1
    tracks = ds.dataset(tmp_path / "out" / "tracks", partitioning="hive").to_table().to_pylist()
    assert max(r["frame_index"] for r in tracks) >= 50  # tracks carry on to the end
    # Parquet took back what was written after the checkpoint: every frame's rows appear once
    keys = [(r["frame_index"], r["track_id"]) for r in tracks]
    assert len(keys) == len(set(keys))
    assert len({e["event_id"] for e in events}) == len(events)
    # ids issued before the checkpoint are never given to a new object after it
    starts = {}
    for e in events:
        if e["type"] == "track_start":
            starts.setdefault(e["track_id"], set()).add(e["frame_index"])
    assert all(len(frames) == 1 for frames in starts.values()), starts


def test_rtsp_stream_survives_a_server_restart(ray_session, media, broker, tmp_path):
    errors, frames_seen = [], []  # frames processed: before the restart, at the reconnect, when stopped
    with rtsp_server(media["long"]) as server:
        job = _job(tmp_path, media, broker, "live", {"cam": server.url})

        def restart_mid_stream(actors):
            def restart():
                stream = actors.streams["cam"]
                frames_seen.append(_processed_at_least(stream, 10, "frames before the server restart"))
                server.kill()  # a crash: the stream's connection just dies
                server.start()
                reconnected = wait_for(lambda: (s := _stats(stream)).counters.reconnects >= 1 and s, "reconnect")
                frames_seen.append(reconnected.counters.frames_processed)
                frames_seen.append(_processed_at_least(stream, frames_seen[-1] + 10, "frames after the reconnect"))
                stream.stop.remote()

            _in_background(restart, errors)

        # a live stream never ends by itself: it is stopped above; max_seconds only guards against a hang
        result = run_job(str(job), max_seconds=HANG_GUARD_S, show_progress=False, on_started=restart_mid_stream)
    assert not errors and len(frames_seen) == 3, (errors, frames_seen)
    stats = result.streams["cam"]
    assert result.exit_code == 0, stats
    assert stats.state is StreamState.STOPPED
    assert stats.counters.reconnects >= 1
    events = ds.dataset(tmp_path / "out" / "events", partitioning="hive").to_table().to_pylist()
    reconnects = [e for e in events if e["type"] == "stream_reconnect"]
    assert reconnects
    last_before = reconnects[0]["frame_index"]
    assert stats.counters.frames_processed > last_before + 5  # frames kept coming after the reconnect


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ({"stream_options": {"fsp": 5}}, "did you mean 'fps'"),
        ({"extra": {"engine": {"max_batch": "many"}}}, "max_batch"),
        ({"stream_options": {"watchlist": "nope"}}, "nope"),
        ({"stream_options": {"source": "ftp://host/a.mp4"}}, "unsupported scheme 'ftp'"),
    ],
)
def test_bad_job_files_exit_2(media, broker, tmp_path, mistake, message, capsys):
    job = _job(tmp_path, media, broker, "bad", {"cam": media["a"]}, **mistake)
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.yaml:" in err and err.count("\n") == 1


def test_engines_wanting_more_cpus_than_the_cluster_has_exit_2(ray_session, media, broker, tmp_path, capsys):
    job = _job(tmp_path, media, broker, "greedy", {"cam": media["a"]}, extra={"engine": {"replicas": 2, "num_cpus": 64}})
    assert main(["run", str(job)]) == 2  # refused at once instead of waiting forever for 128 CPUs
    err = capsys.readouterr().err
    assert "greedy.yaml: engine: 2 replica(s) x num_cpus 64 need 128 CPUs" in err and "lower engine.num_cpus" in err


def test_metrics_port_in_use_exits_2_before_anything_starts(ray_session, media, broker, tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        job = _job(tmp_path, media, broker, "busy", {"cam": media["a"]}, metrics_port=port)  # on 127.0.0.1
        assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"busy.yaml: metrics.port: cannot serve on 127.0.0.1:{port}" in err and "choose a free port" in err
    assert not (tmp_path / "out").exists()  # refused before any stream ran


def test_a_stopped_job_resumes_where_it_stopped_and_skips_finished_streams(ray_session, media, broker, tmp_path):
    job = _job(tmp_path, media, broker, "archive", {"long": media["long"], "short": media["a"]})
    errors = []

    def stop_mid_run(actors):
        def stop():
            stream = actors.streams["long"]
            _processed_at_least(stream, 10, "frames before the stop")
            stream.stop.remote()  # as the driver does when the job is stopped

        _in_background(stop, errors)

    first = run_job(str(job), show_progress=False, on_started=stop_mid_run)
    assert not errors, errors
    stopped = first.streams["long"]
    assert first.exit_code == 0 and stopped.state is StreamState.STOPPED and stopped.counters.frames_processed < 60, stopped
    saved = json.loads((tmp_path / "out" / "_checkpoints" / "archive" / "long.json").read_text())
    assert saved["state"] == "stopped" and saved["frame_index"] == stopped.counters.frames_processed - 1

    second = run_job(str(job), show_progress=False, resume=True)
    assert second.exit_code == 0
    assert second.streams["long"].state is StreamState.FINISHED
    assert second.streams["long"].counters.frames_processed == 60  # the first run's frames, then the rest once
    events = ds.dataset(tmp_path / "out" / "events", partitioning="hive").to_table().to_pylist()
    mine = [e for e in events if str(e["stream_id"]) == "long"]
    assert [e["frame_index"] for e in mine if e["type"] == "stream_resume"] == [saved["frame_index"]]
    tracks = [r for r in ds.dataset(tmp_path / "out" / "tracks", partitioning="hive").to_table().to_pylist()
              if str(r["stream_id"]) == "long"]
    keys = [(r["frame_index"], r["track_id"]) for r in tracks]
    assert len(keys) == len(set(keys)) and max(r["frame_index"] for r in tracks) >= 50
    starts = [e["track_id"] for e in mine if e["type"] == "track_start"]
    assert len(starts) == len(set(starts))  # the resumed run never reissues an id of the first run

    files = sorted(p.name for p in (tmp_path / "out").rglob("*.parquet"))
    third = run_job(str(job), show_progress=False, resume=True)  # everything finished: nothing runs again
    assert third.exit_code == 0 and {s.state for s in third.streams.values()} == {StreamState.FINISHED}
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.parquet")) == files


def test_resume_without_a_parquet_sink_exits_2(media, broker, tmp_path, capsys):
    job = _job(tmp_path, media, broker, "nopq", {"cam": media["a"]}, out=None)
    assert main(["run", str(job), "--resume"]) == 2
    assert "--resume needs sinks.parquet" in capsys.readouterr().err
