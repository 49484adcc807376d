"""Kafka and Parquet sinks against a real (embedded Tansu) broker and real files."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import socket
import threading
import time
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer

from operators.broker import EmbeddedBroker, resolve_bootstrap
from operators.records import SCHEMA_VERSION, Event, TrackObservation
from operators.sinks import KafkaSink, ParquetSink, SinkError
from operators.sinks.parquet_sink import open_dataset

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
STREAMS = ("cam1", "cam/2", "7")
# The embedded broker's group join takes ~session_timeout_ms / 2 (at least ~1 s): keep it small.
SESSION_TIMEOUT_MS = 1000
HANG_GUARD_S = 60.0  # only ends a call that would hang; the client timeouts below end them much sooner


def track(stream_id: str, frame: int, track_id: int = 1) -> TrackObservation:
    # Scores and coordinates exactly representable in float32, so Parquet round trips compare equal.
    return TrackObservation(
        job="job", stream_id=stream_id, source=f"/videos/{stream_id}.mp4", frame_index=frame, pts_s=frame / 5,
        ingest_ts=T0 + dt.timedelta(seconds=frame), track_id=track_id, concept="forklift", score=0.75,
        box_xyxy=(1.0, 2.5, 30.0, 40.25), mask={"size": [100, 100], "counts": f"PPa0{frame}b0k1"}, area_px=120 + frame,
        model="facebook/sam3")


def event(stream_id: str, frame: int, type_: str = "track_start") -> Event:
    return Event(type=type_, job="job", stream_id=stream_id, ts=T0 + dt.timedelta(seconds=frame), track_id=frame,
                 concept="forklift", frame_index=frame, pts_s=frame / 5, max_score=0.5, details={"zone": "dock"})


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        yield b


def consume(servers: str, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=servers, group_id=f"test-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
        enable_auto_commit=False, session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=250)
    messages = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
        for batch in consumer.poll(timeout_ms=300).values():  # anything beyond `expected` is a duplicate
            messages.extend(batch)
    finally:
        consumer.close()
    return sorted(messages, key=lambda m: (m.partition, m.offset))


def returns(call):
    """``call()``'s result, or what it raised, once it returns; fails if it hangs."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), f"{call} did not return within {HANG_GUARD_S} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


# ---------------------------------------------------------------- broker

def test_embedded_broker_lifecycle():
    with EmbeddedBroker() as b:
        assert b.is_running()
        host, port = b.bootstrap_servers.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
        assert b.create_topics(["a", "b"], partitions=2) == ["a", "b"]
        assert b.create_topics(["a", "c"]) == ["c"]  # existing topics are left alone
        with pytest.raises(TypeError, match="bootstrap_servers"):
            pickle.dumps(b)  # actors get the address, not the broker
        log_path = b.log_path
    assert not b.is_running()
    assert not log_path.exists()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    b.close()  # twice is fine


def test_resolve_bootstrap():
    assert resolve_bootstrap(" k1:9092, k2:9093 ") == ("k1:9092,k2:9093", None)
    assert resolve_bootstrap("[::1]:9092") == ("[::1]:9092", None)
    for bad in ("", "k1", "k1:port", ":9092", "k1:0"):
        with pytest.raises(ValueError, match="sinks.kafka.bootstrap_servers"):
            resolve_bootstrap(bad)
    servers, b = resolve_bootstrap("embedded")
    try:
        assert b is not None and b.is_running() and servers == b.bootstrap_servers
    finally:
        b.close()


# ---------------------------------------------------------------- Kafka

def test_kafka_tracks_keys_json_and_order(broker):
    topic, events_topic = "tracks-order", "events-order"
    broker.create_topics([topic, events_topic], partitions=3)
    records = [track(s, f) for f in range(40) for s in STREAMS]
    with KafkaSink(broker.bootstrap_servers, topic, events_topic) as sink:
        for i in range(0, len(records), 16):
            sink.write_tracks(records[i:i + 16])
        sink.flush()
        assert sink.idempotent is True
        assert (sink.sent, sink.errors) == (len(records), 0)

    messages = consume(broker.bootstrap_servers, topic, len(records))
    assert len(messages) == len(records)
    by_stream: dict[str, list[dict]] = {}
    partitions: dict[str, set[int]] = {}
    for m in messages:
        value = json.loads(m.value)
        assert value["schema_version"] == SCHEMA_VERSION
        assert m.key.decode() == value["stream_id"]
        by_stream.setdefault(value["stream_id"], []).append(value)
        partitions.setdefault(value["stream_id"], set()).add(m.partition)
    assert set(by_stream) == set(STREAMS)
    for stream_id, values in by_stream.items():
        assert len(partitions[stream_id]) == 1  # keyed by stream: one partition per stream
        assert [v["frame_index"] for v in values] == list(range(40))  # per-stream order kept
        expected = json.loads(track(stream_id, 3).to_json())
        assert values[3] == expected


def test_kafka_events_topic(broker):
    events = [event("cam1", 0), event("cam1", 0, "track_end"), event("cam/2", 5), event("cam1", 9, "stream_end")]
    with KafkaSink(broker.bootstrap_servers, "tracks-ev", "events-ev") as sink:
        sink.write_events(events)
        with pytest.raises(TypeError, match="expected TrackObservation"):
            sink.write_tracks(events)
    messages = consume(broker.bootstrap_servers, "events-ev", len(events))  # auto-created: 4 partitions
    assert len(messages) == len(events)
    for stream_id in ("cam1", "cam/2"):
        mine = [m for m in messages if m.key.decode() == stream_id]
        values = [json.loads(m.value) for m in mine]
        assert [v["event_id"] for v in values] == [e.event_id for e in events if e.stream_id == stream_id]
        assert all(v["schema_version"] == SCHEMA_VERSION and v["stream_id"] == stream_id for v in values)
    first = json.loads(next(m.value for m in messages if json.loads(m.value)["event_id"] == events[0].event_id))
    assert first == json.loads(events[0].to_json())
    assert first["zone"] == "dock" and first["type"] == "track_start"


def test_kafka_dead_port_fails_at_flush():
    address = dead_address()
    sink = KafkaSink(address, "t", "e", client={"bootstrap_timeout_ms": 800, "max_block_ms": 800,
                                                "request_timeout_ms": 800})
    sink.write_tracks([track("cam1", f) for f in range(5)])
    sink.write_events([event("cam1", 0)])
    with pytest.raises(SinkError, match=address) as info:
        returns(sink.flush)  # the client's timeouts end it: nothing waits for a broker that never comes
    assert info.value.failed == 6 and sink.errors == 6 and sink.sent == 0
    assert "KafkaTimeoutError" in str(info.value)
    sink.flush()  # a failure is reported once
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write_tracks([track("cam1", 0)])


def test_kafka_broker_lost_mid_stream_fails_at_flush():
    client = {"delivery_timeout_ms": 2500, "request_timeout_ms": 1000, "max_block_ms": 1000,
              "reconnect_backoff_max_ms": 200, "retry_backoff_ms": 50}
    with EmbeddedBroker() as lost:
        sink = KafkaSink(lost.bootstrap_servers, "tracks-lost", "events-lost", client=client, linger_ms=0)
        sink.write_tracks([track("cam1", f) for f in range(10)])
        sink.flush()
        assert sink.sent == 10
    sink.write_tracks([track("cam1", f) for f in range(10, 15)])
    with pytest.raises(SinkError, match="5 records could not be delivered") as info:
        returns(sink.close)  # delivery_timeout_ms gives up on the lost broker
    assert info.value.failed == 5 and sink.errors == 5 and sink.sent == 10


def test_kafka_oversized_record_fails_alone(broker):
    records = [track("cam1", f) for f in range(4)]
    big = TrackObservation(**{**records[0].__dict__, "frame_index": 9, "mask": {"size": [1, 1], "counts": "x" * 5000}})
    with KafkaSink(broker.bootstrap_servers, "tracks-big", "events-big", client={"max_request_size": 2000}) as sink:
        sink.write_tracks(records[:2] + [big] + records[2:])
        with pytest.raises(SinkError, match="MessageSizeTooLarge") as info:
            sink.flush()
        assert info.value.failed == 1 and sink.sent == 4
    values = [json.loads(m.value) for m in consume(broker.bootstrap_servers, "tracks-big", 4)]
    assert [v["frame_index"] for v in values] == [0, 1, 2, 3]


def test_kafka_client_options_and_retry_counter(broker):
    with pytest.raises(ValueError, match="acks=all"):
        KafkaSink(broker.bootstrap_servers, "t", "e", client={"acks": 1})
    with pytest.raises(ValueError, match="value_serializer"):
        KafkaSink(broker.bootstrap_servers, "t", "e", client={"value_serializer": str.encode})
    with pytest.raises(ValueError, match="lingr_ms"):
        KafkaSink(broker.bootstrap_servers, "t", "e", client={"lingr_ms": 5})
    with KafkaSink(broker.bootstrap_servers, "t-retry", "e-retry") as sink:
        sink.connect()
        assert sink.retries == 0
        # The sender records retries on this sensor; the sink must expose them as a total.
        sink._producer._metrics.get_sensor("record-retries").record(3)
        assert sink.retries == 3


# ---------------------------------------------------------------- Parquet

def rows_of(dataset: ds.Dataset) -> list[dict]:
    return sorted(dataset.to_table().to_pylist(), key=lambda r: (r["stream_id"], r["frame_index"], r.get("type", "")))


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_parquet_flush_by_count_and_read_back(tmp_path):
    records = [track(s, f) for s in STREAMS for f in range(12)]
    sink = ParquetSink(tmp_path, job="job", flush_rows=5, flush_seconds=60)
    sink.write_tracks(records)
    files = parquet_files(tmp_path / "tracks")
    assert len(files) == 2 * len(STREAMS)  # two full files of 5 rows per stream, 2 rows still buffered
    assert all(pq.read_metadata(f).num_rows == 5 for f in files)
    assert sink.buffered_rows == 2 * len(STREAMS)
    sink.close()
    assert sink.rows_written == len(records) and sink.buffered_rows == 0
    assert (tmp_path / "tracks" / "stream_id=cam%2F2").is_dir()

    expected = sorted((r.to_row() for r in records), key=lambda r: (r["stream_id"], r["frame_index"]))
    assert rows_of(ds.dataset(tmp_path / "tracks", partitioning="hive")) == expected
    assert rows_of(open_dataset(tmp_path, "tracks")) == expected
    assert open_dataset(tmp_path).schema.field("stream_id").type == "string"


def test_parquet_rollback_takes_back_only_this_runs_files_after_the_point(tmp_path):
    with ParquetSink(tmp_path, job="job", flush_rows=2, run="old") as other_run:
        other_run.write_tracks([track("cam1", f) for f in range(4)])  # an earlier run into the same dataset
    sink = ParquetSink(tmp_path, job="job", flush_rows=2, run="r1")
    sink.write_tracks([track("cam1", f) for f in range(4)] + [track("cam/2", f) for f in range(2)])
    point = sink.sequence("cam1")
    assert point == {"tracks": 2, "events": 0}
    sink.write_tracks([track("cam1", f) for f in range(4, 9)])  # two files after the point, one row buffered
    sink.write_events([event("cam1", 5)])
    sink.flush()

    restarted = ParquetSink(tmp_path, job="job", flush_rows=2, run="r1")  # the stream's next process
    assert restarted.rollback("cam1", point) == 4  # 3 track files (last one by flush) + 1 events file
    restarted.write_tracks([track("cam1", f) for f in range(4, 6)])
    restarted.close()
    frames = sorted(r["frame_index"] for r in rows_of(ds.dataset(tmp_path / "tracks", partitioning="hive"))
                    if r["stream_id"] == "cam1")
    assert frames == sorted([*range(4), *range(6)])  # the other run's 4 rows, this run's 0-3 then 4-5 once
    assert len(parquet_files(tmp_path / "tracks" / "stream_id=cam%2F2")) == 1  # other streams untouched
    assert not (tmp_path / "events").exists() or not parquet_files(tmp_path / "events")
    with pytest.raises(ValueError, match="run="):
        ParquetSink(tmp_path, job="job").rollback("cam1", point)


def test_parquet_flush_by_time(tmp_path):
    sink = ParquetSink(tmp_path, job="job", flush_rows=1000, flush_seconds=0.3)
    written = time.monotonic()
    sink.write_tracks([track("cam1", f) for f in range(3)])
    deadline = written + HANG_GUARD_S
    while not parquet_files(tmp_path) and time.monotonic() < deadline:
        sink.maybe_flush()  # explicit check, until the buffer is old enough
        time.sleep(0.01)
    # seen only after the rows were flush_seconds old (however slow this machine, never before)
    assert time.monotonic() - written >= 0.3
    assert len(parquet_files(tmp_path / "tracks" / "stream_id=cam1")) == 1 and sink.buffered_rows == 0
    sink.write_tracks([track("cam/2", 0)])
    time.sleep(0.35)  # the sink's own clock then says the row is older than flush_seconds
    sink.write_tracks([track("7", 0)])  # a write also flushes other streams' old buffers
    assert len(parquet_files(tmp_path / "tracks" / "stream_id=cam%2F2")) == 1
    assert sink.buffered_rows == 1
    sink.close()
    assert sink.rows_written == 5


def test_parquet_events_dataset(tmp_path):
    events = [event("cam1", 0), event("cam1", 4, "track_end"), event("cam/2", 1), event("7", 2, "stream_error")]
    with ParquetSink(tmp_path, job="job") as sink:
        sink.write_events(events)
        with pytest.raises(TypeError, match="expected Event"):
            sink.write_events([track("cam1", 0)])
    expected = sorted((e.to_row() for e in events), key=lambda r: (r["stream_id"], r["frame_index"], r["type"]))
    assert rows_of(ds.dataset(tmp_path / "events", partitioning="hive")) == expected
    assert rows_of(open_dataset(tmp_path, "events")) == expected


def test_parquet_files_are_atomic(tmp_path):
    sink = ParquetSink(tmp_path, job="job", flush_rows=50, flush_seconds=60)
    stop = threading.Event()
    seen: list[int] = []
    problems: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                for f in (tmp_path / "tracks").rglob("*.parquet"):
                    seen.append(pq.read_table(f).num_rows)
                if (tmp_path / "tracks").exists():
                    ds.dataset(tmp_path / "tracks", partitioning="hive").to_table()
            except BaseException as exc:  # any partial file shows up here
                problems.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for f in range(0, 400, 10):
            sink.write_tracks([track(s, f + i) for s in STREAMS for i in range(10)])
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert seen and set(seen) == {50}  # only complete files were ever visible
    sink.close()
    files = parquet_files(tmp_path)
    assert all(not f.name.startswith((".", "_")) and f.suffix == ".parquet" for f in files)
    assert open_dataset(tmp_path).count_rows() == 400 * len(STREAMS)


def test_parquet_write_failure_keeps_rows(tmp_path):
    (tmp_path / "tracks").write_text("not a directory")
    sink = ParquetSink(tmp_path, job="job", flush_rows=2)
    with pytest.raises(SinkError, match="could not write 2 tracks rows"):
        sink.write_tracks([track("cam1", 0), track("cam1", 1)])
    assert sink.buffered_rows == 2
    (tmp_path / "tracks").unlink()
    sink.close()  # the retry succeeds
    assert open_dataset(tmp_path).count_rows() == 2
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
