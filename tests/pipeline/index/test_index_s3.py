"""Indexing an archive that lives in object storage into a dataset in object storage: the tests' own
S3-compatible server (moto), real Ray, real engines with the tiny random checkpoint, real PyAV
decoding; everything read back from S3 through pyarrow's S3 filesystem."""

from __future__ import annotations

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from operators.index_tables import SCHEMAS
from operators.synthetic import write_synthetic_video
from pipeline.exit_codes import ExitCode
from pipeline.index.run import run_index
from pipeline.jobspec import parse_job
from sam3_runtime.model import write_random_checkpoint

JOB = """
name: idx-s3
model: {{checkpoint: {checkpoint}, device: cpu}}
engine: {{replicas: 1, max_batch: 4, max_wait_ms: 10, hotstart: "off"}}
watchlists:
  shapes:
    - {{concept: red square, threshold: 0.1}}
index: {{sources: ["{sources}"], out: "{out}", watchlist: shapes, fps: 10}}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _upload_video(client, bucket: str, key: str, tmp_path, frames: int) -> None:
    local = tmp_path / f"upload-{frames}-{key.replace('/', '_')}"
    write_synthetic_video(local, frames=frames, size=(160, 120), fps=10)
    client.upload_file(str(local), bucket, key)


def _table(s3_server, uri: str, name: str) -> list[dict]:
    path = uri.removeprefix("s3://") + "/" + name
    return ds.dataset(path, format="parquet", schema=SCHEMAS[name], filesystem=s3_server.filesystem()).to_table() \
        .to_pylist()


def _latest(s3_server, out: str) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for row in sorted(_table(s3_server, out, "files"), key=lambda r: r["indexed_at"]):
        latest[row["uri"]] = row
    return latest


@pytest.mark.slow  # three runs, each starting an engine
def test_an_archive_in_s3_is_indexed_into_s3_and_re_runs_do_only_what_changed(ray_session, s3_env, checkpoint,
                                                                              tmp_path):
    server = s3_env
    bucket_uri = server.bucket()
    bucket = bucket_uri.removeprefix("s3://")
    client = server.client()
    _upload_video(client, bucket, "videos/a.mp4", tmp_path, frames=10)
    _upload_video(client, bucket, "videos/cam2/b.mp4", tmp_path, frames=12)
    client.put_object(Bucket=bucket, Key="videos/broken.mp4", Body=b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    client.put_object(Bucket=bucket, Key="videos/notes.txt", Body=b"not a video")  # not picked by a prefix
    out = f"{bucket_uri}/dataset"
    job = parse_job(JOB.format(checkpoint=checkpoint, sources=f"{bucket_uri}/videos/", out=out))

    first = run_index(job, show_progress=False)
    assert first.exit_code == ExitCode.PARTIAL and (first.done, first.failed) == (2, 1)
    catalog = _latest(server, out)
    a, b, broken = (f"{bucket_uri}/videos/{k}" for k in ("a.mp4", "cam2/b.mp4", "broken.mp4"))
    assert set(catalog) == {a, b, broken}
    assert catalog[broken]["status"] == "failed" and catalog[broken]["error"]
    assert (catalog[a]["status"], catalog[a]["frames"]) == ("done", 10)
    assert (catalog[b]["status"], catalog[b]["frames"]) == ("done", 12)

    tracks = _table(server, out, "tracks")
    assert tracks and {t["stream_id"] for t in tracks} == {a, b}
    keys = [(t["stream_id"], t["track_id"], t["frame_index"]) for t in tracks]
    assert len(keys) == len(set(keys))
    summaries = _table(server, out, "track_summaries")
    assert {(s["uri"], s["track_id"]) for s in summaries} == {(t["stream_id"], t["track_id"]) for t in tracks}
    ends = sorted(e["stream_id"] for e in _table(server, out, "events") if e["type"] == "stream_end")
    assert ends == [a, b]

    again = run_index(job, show_progress=False)
    assert (again.done, again.failed, again.up_to_date, again.failed_before) == (0, 0, 2, 1)

    # b re-uploaded with new content under the same key: only b runs, and its old rows go
    _upload_video(client, bucket, "videos/cam2/b.mp4", tmp_path, frames=20)
    changed = run_index(job, show_progress=False)
    assert (changed.done, changed.failed, changed.up_to_date) == (1, 0, 1)
    after = _latest(server, out)
    assert after[b]["frames"] == 20 and after[b]["parts"] != catalog[b]["parts"]
    assert after[a] == catalog[a]
    ends = sorted(e["stream_id"] for e in _table(server, out, "events") if e["type"] == "stream_end")
    assert ends == [a, b]  # b's first rows were replaced, not added to
    parts = {i.base_name for i in server.filesystem().get_file_info(
        pafs.FileSelector(f"{bucket}/dataset/tracks", recursive=True))}
    assert parts == {f"{after[a]['parts'][0]}.parquet", f"{after[b]['parts'][0]}.parquet"}
