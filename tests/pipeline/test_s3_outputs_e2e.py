"""A real job whose Parquet dataset lives in an S3-compatible store (moto's server, tests/s3_server.py):
the stream actors write their records there, the driver keeps the resume points beside them, and a
``--resume`` run carries the stopped stream on from the store and skips the finished one."""

from __future__ import annotations

import threading

import pytest

from operators.resume_point import ResumePoint, StreamState
from operators.sinks.parquet_sink import open_dataset
from operators.storage import resolve
from operators.synthetic import write_synthetic_video
from pipeline.driver import run_job
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import wait_for
from tests.job_files import streams_from, write_job

LONG_FRAMES = 24


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-media")
    return {"long": write_synthetic_video(root / "long.mp4", frames=LONG_FRAMES, size=(160, 120), fps=10),
            "short": write_synthetic_video(root / "short.mp4", frames=8, size=(160, 120), fps=10),
            "checkpoint": write_random_checkpoint(root / "tiny")}


def rows(uri: str, stream_id: str, kind: str) -> list[dict]:
    return [r for r in open_dataset(uri, kind).to_table().to_pylist() if r["stream_id"] == stream_id]


def object_names(uri: str) -> list[str]:
    root = resolve(uri)
    return [root.child(info).path[len(root.path) + 1:] for info in root.list(".parquet")]


def stop_after(stream: str, frames: int, errors: list):
    """``on_started`` for run_job: stop ``stream`` once it processed ``frames`` frames, as a stopped job would."""
    def on_started(actors):
        def stop():
            try:
                actor = actors.streams[stream]
                wait_for(lambda: actor.get_stats.remote().future().result().counters.frames_processed >= frames,
                         f"{frames} frames of stream {stream}")
                actor.stop.remote()
            except BaseException as e:  # noqa: BLE001 - shown by the test
                errors.append(e)

        threading.Thread(target=stop, daemon=True).start()

    return on_started


@pytest.mark.slow
def test_records_and_resume_points_go_to_s3_and_resume_reads_them_back(ray_session, s3_env, media, tmp_path):
    out = s3_env.bucket() + "/jobs/out"
    job = write_job(tmp_path / "s3job.yaml", checkpoint=media["checkpoint"], parquet=out,
                    streams=streams_from({"long": media["long"], "short": media["short"]}))

    errors: list = []
    first = run_job(str(job), show_progress=False, on_started=stop_after("long", 6, errors))
    assert not errors, errors
    assert first.exit_code == 0, first.streams
    stopped, short = first.streams["long"], first.streams["short"]
    assert stopped.state is StreamState.STOPPED and stopped.counters.frames_processed < LONG_FRAMES, stopped
    assert short.state is StreamState.FINISHED, short
    # every row the stream actors counted as written is in the bucket, read through pyarrow's S3 filesystem
    for stats in (stopped, short):
        written = len(rows(out, stats.stream_id, "tracks")) + len(rows(out, stats.stream_id, "events"))
        assert written == stats.sinks["parquet"].records > 0, stats
    assert not (tmp_path / "s3:").exists()  # nothing took the URI for a local path
    saved = ResumePoint.from_json(resolve(f"{out}/_checkpoints/s3job/long.json").read_bytes().decode())
    assert saved.state is StreamState.STOPPED and saved.frame_index == stopped.counters.frames_processed - 1
    short_files = [n for n in object_names(out) if "stream_id=short/" in n]

    second = run_job(str(job), show_progress=False, resume=True)
    assert second.exit_code == 0, second.streams
    assert second.streams["short"].state is StreamState.FINISHED  # skipped: finished in the first run
    assert [n for n in object_names(out) if "stream_id=short/" in n] == short_files
    resumed = second.streams["long"]
    assert resumed.state is StreamState.FINISHED and resumed.counters.frames_processed == LONG_FRAMES, resumed
    events = rows(out, "long", "events")
    assert [e["frame_index"] for e in events if e["type"] == "stream_resume"] == [saved.frame_index]
    keys = [(r["frame_index"], r["track_id"]) for r in rows(out, "long", "tracks")]
    assert len(keys) == len(set(keys))  # the frames before the resume point were not written twice
    final = ResumePoint.from_json(resolve(f"{out}/_checkpoints/s3job/long.json").read_bytes().decode())
    assert final.state is StreamState.FINISHED and final.frame_index == LONG_FRAMES - 1
