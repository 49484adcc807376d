"""The Parquet sink writing to a real S3-compatible server: the dataset reads back through open_dataset,
a rollback deletes exactly this run's later objects, and a bucket that cannot be written keeps the rows."""

from __future__ import annotations

import uuid

import pytest

from operators.sinks import ParquetSink, SinkError
from operators.sinks.parquet_sink import open_dataset
from tests.operators.test_sinks import STREAMS, event, rows_of, track


def keys(s3, uri: str) -> list[str]:
    """Every object key under ``uri`` (s3://bucket/prefix), relative to the prefix."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix):].lstrip("/") for page in pages for o in page.get("Contents", []))


def test_tracks_and_events_land_in_the_bucket_and_read_back(s3_env):
    uri = s3_env.bucket() + "/datasets/demo"
    records = [track(s, f) for s in STREAMS for f in range(7)]
    events = [event("cam1", 0), event("cam/2", 3, "track_end")]
    with ParquetSink(uri, job="job", flush_rows=3, flush_seconds=60, run="r1") as sink:
        sink.write_tracks(records)
        sink.write_events(events)
    assert sink.rows_written == len(records) + len(events)

    stored = keys(s3_env, uri)
    assert all(k.endswith(".parquet") and "/." not in k for k in stored)  # no temporaries, nothing else
    assert sum(k.startswith("tracks/stream_id=cam%2F2/part-cam_2-r1-") for k in stored) == 3  # 3 + 3 + 1 rows
    expected = sorted((r.to_row() for r in records), key=lambda r: (r["stream_id"], r["frame_index"]))
    assert rows_of(open_dataset(uri, "tracks")) == expected
    assert rows_of(open_dataset(uri + "/", "events")) == sorted(
        (e.to_row() for e in events), key=lambda r: (r["stream_id"], r["frame_index"], r["type"]))
    assert open_dataset(uri).schema.field("stream_id").type == "string"


def test_rollback_deletes_only_this_runs_objects_after_the_point(s3_env):
    uri = s3_env.bucket() + "/out"
    with ParquetSink(uri, job="job", flush_rows=2, run="old") as other_run:
        other_run.write_tracks([track("cam1", f) for f in range(4)])  # an earlier run into the same dataset
    sink = ParquetSink(uri, job="job", flush_rows=2, run="r1")
    sink.write_tracks([track("cam1", f) for f in range(4)] + [track("cam/2", f) for f in range(2)])
    point = sink.sequence("cam1")
    sink.write_tracks([track("cam1", f) for f in range(4, 9)])
    sink.write_events([event("cam1", 5)])
    sink.flush()
    before = keys(s3_env, uri)

    restarted = ParquetSink(uri, job="job", flush_rows=2, run="r1")  # the stream's next process
    assert restarted.rollback("cam1", point) == 4  # 3 track objects + 1 events object written after the point
    after = keys(s3_env, uri)
    taken_back = sorted(set(before) - set(after))
    assert [k.split("/")[0] for k in taken_back] == ["events", "tracks", "tracks", "tracks"]
    assert all("/part-cam1-r1-" in k and int(k.rsplit("/part-cam1-r1-", 1)[1][:6]) >= point.get(k.split("/")[0], 0)
               for k in taken_back)
    restarted.write_tracks([track("cam1", f) for f in range(4, 6)])
    restarted.close()
    frames = sorted(r["frame_index"] for r in rows_of(open_dataset(uri)) if r["stream_id"] == "cam1")
    assert frames == sorted([*range(4), *range(6)])  # the other run's rows, this run's 0-3 then 4-5 once
    assert sum(k.startswith("tracks/stream_id=cam%2F2/") for k in after) == 1  # other streams untouched


def test_a_bucket_that_cannot_be_written_fails_the_flush_and_keeps_the_rows(s3_env):
    name = f"later-{uuid.uuid4().hex[:12]}"
    uri = f"s3://{name}/out"
    sink = ParquetSink(uri, job="job", flush_rows=2, run="r1")
    with pytest.raises(SinkError, match=rf"could not write 2 tracks rows of stream 'cam1' to "
                                        rf"{uri}/tracks/stream_id=cam1: .*bucket '{name}' does not exist") as caught:
        sink.write_tracks([track("cam1", 0), track("cam1", 1), track("cam1", 2)])
    assert caught.value.failed == 2 and sink.buffered_rows == 3 and sink.rows_written == 0
    s3_env.bucket(name)
    sink.close()  # the retry succeeds
    assert sorted(r["frame_index"] for r in rows_of(open_dataset(uri))) == [0, 1, 2]
