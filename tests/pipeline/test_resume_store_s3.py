"""Resume points beside a dataset in a real S3-compatible store: written where --resume looks, read back by
a later store, replaced whole, and a store that cannot be written does not stop the job."""

from __future__ import annotations

import logging
import socket

import pytest

from operators.resume_point import StreamState
from operators.storage import StorageError
from pipeline.jobspec.sinks import ParquetSinkSpec
from pipeline.resume_store import ResumeStore, resume_dir
from tests.pipeline.test_resume_store import resume_point
from tests.s3_server import S3Server


class _Job:
    """The two fields of a job that place its resume points."""

    def __init__(self, name: str, parquet_path: str):
        self.name = name
        self.sinks = type("Sinks", (), {"parquet": ParquetSinkSpec.model_validate({"path": parquet_path})})()


def object_keys(s3: S3Server, uri: str) -> list[str]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_resume_points_sit_beside_the_s3_dataset_and_a_later_run_reads_them(s3_env):
    dataset = s3_env.bucket() + "/datasets/demo/"
    directory = resume_dir(_Job("nightly", dataset))
    assert directory.uri == dataset.rstrip("/") + "/_checkpoints/nightly"
    store = ResumeStore(directory)
    store.put(resume_point(3))
    store.put(resume_point(9, state=StreamState.FINISHED))
    store.put(resume_point(4, stream_id="other"))
    assert object_keys(s3_env, dataset) == [f"datasets/demo/_checkpoints/nightly/{n}.json" for n in ("cam%2F1", "other")]

    later = ResumeStore(resume_dir(_Job("nightly", dataset)))  # the --resume run
    assert later.load("cam/1") == resume_point(9, state=StreamState.FINISHED)
    assert later.get("cam/1") == resume_point(9, state=StreamState.FINISHED)
    assert later.load("never-ran") is None
    assert ResumeStore(resume_dir(_Job("another-job", dataset))).load("cam/1") is None  # each job its own folder


def test_a_damaged_resume_point_object_is_named(s3_env):
    directory = s3_env.bucket() + "/out/_checkpoints/job"
    s3_env.client().put_object(Bucket=directory[5:].split("/")[0], Key="out/_checkpoints/job/cam.json", Body=b"{")
    with pytest.raises(ValueError, match=rf"{directory}/cam\.json: not a readable resume point.*delete it"):
        ResumeStore(directory).load("cam")


def test_a_store_that_cannot_be_written_keeps_the_point_in_memory_and_logs(s3_env, caplog):
    store = ResumeStore("s3://no-such-bucket-for-points/out/_checkpoints/job")
    with caplog.at_level(logging.ERROR, logger="pipeline.resume_store"):
        store.put(resume_point(5))
    assert store.get("cam/1") == resume_point(5)
    assert "could not write its resume point to s3://no-such-bucket-for-points/out/_checkpoints/job" in caplog.text
    assert "'no-such-bucket-for-points' does not exist" in caplog.text


def test_an_unreachable_store_fails_the_load_instead_of_starting_the_stream_over(s3_env, monkeypatch):
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
    store = ResumeStore("s3://some-bucket/out/_checkpoints/job")
    with pytest.raises(StorageError, match=r"s3://some-bucket/out/_checkpoints/job/cam\.json: cannot be read"):
        store.load("cam")
