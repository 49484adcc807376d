"""Indexing an archive end to end: real Ray, real engines with the tiny random checkpoint, real
PyAV decoding, Parquet read back with pyarrow and DuckDB."""

from __future__ import annotations

import io
import os
import shutil
import threading

import duckdb
import pyarrow.dataset as ds
import pytest
from PIL import Image

from operators.index_tables import SCHEMAS
from operators.synthetic import write_synthetic_video
from pipeline.exit_codes import ExitCode
from pipeline.index.run import run_index
from pipeline.jobspec import parse_job
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S, wait_for

JOB = """
name: idx
model: {{checkpoint: {checkpoint}, device: cpu}}
engine: {{replicas: {engines}, max_batch: 4, max_wait_ms: 10, hotstart: "off"}}
watchlists:
  shapes:
{rules}
index: {{sources: {sources}, out: {out}, watchlist: shapes, fps: {fps}, retry_failed: {retry}, force: {force}}}
"""
RED = "    - {concept: red square, threshold: 0.1}"
GREEN = "    - {concept: green disc, threshold: 0.1}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    (root / "videos" / "day2").mkdir(parents=True)
    write_synthetic_video(root / "videos" / "a.mp4", frames=12, size=(160, 120), fps=10)
    write_synthetic_video(root / "videos" / "b.mkv", frames=16, size=(160, 120), fps=10)
    write_synthetic_video(root / "videos" / "day2" / "c.mp4", frames=10, size=(160, 120), fps=10)
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {"videos": root / "videos", "ckpt": write_random_checkpoint(root / "tiny")}


def _job(archive, out, *, rules=(RED,), sources=None, engines=1, fps=10, retry=False, force=False,
         files_in_flight=None):
    sources = sources or [str(archive["videos"]) + "/"]
    text = JOB.format(checkpoint=archive["ckpt"], engines=engines, rules="\n".join(rules), sources=list(sources),
                      out=out, fps=fps, retry=str(retry).lower(), force=str(force).lower())
    job = parse_job(text)
    if files_in_flight is None:
        return job
    return job.model_copy(update={"index": job.index.model_copy(update={"files_in_flight": files_in_flight})})


def _videos(tmp_path, count: int, frames: int):
    """A folder of ``count`` synthetic videos v0.mp4, v1.mp4, ...; their paths."""
    folder = tmp_path / "videos"
    folder.mkdir()
    return [write_synthetic_video(folder / f"v{i}.mp4", frames=frames, size=(160, 120), fps=10)
            for i in range(count)]


def _table(out, name):
    return ds.dataset(os.path.join(out, name), format="parquet", schema=SCHEMAS[name]).to_table().to_pylist()


def _catalog(out) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for row in sorted(_table(out, "files"), key=lambda r: r["indexed_at"]):
        latest[row["uri"]] = row
    return latest


def test_an_archive_is_indexed_file_by_file_then_incrementally(ray_session, archive, tmp_path):
    out = str(tmp_path / "dataset")
    first = run_index(_job(archive, out), show_progress=False)
    assert first.exit_code == ExitCode.PARTIAL  # the broken file failed, the rest are done
    assert (first.done, first.failed) == (3, 1)
    catalog = _catalog(out)
    videos = str(archive["videos"])
    assert {os.path.relpath(u, videos) for u in catalog} == {"a.mp4", "b.mkv", "day2/c.mp4", "broken.mp4"}
    broken = catalog[os.path.join(videos, "broken.mp4")]
    assert broken["status"] == "failed" and "not a media file" in broken["error"]
    done = {u: r for u, r in catalog.items() if r["status"] == "done"}
    assert {r["frames"] for r in done.values()} == {12, 16, 10}
    assert all(r["concepts"] == ["red square"] and len(r["parts"]) == 1 for r in done.values())

    tracks = _table(out, "tracks")
    assert tracks, "the random model at threshold 0.1 should publish tracks"
    assert {t["stream_id"] for t in tracks} <= set(done)  # every row names its file
    keys = [(t["stream_id"], t["track_id"], t["frame_index"]) for t in tracks]
    assert len(keys) == len(set(keys))
    summaries = _table(out, "track_summaries")
    by_track = {(s["uri"], s["track_id"]): s for s in summaries}
    assert set(by_track) == {(t["stream_id"], t["track_id"]) for t in tracks}
    for (uri, track_id), summary in by_track.items():
        frames = [t for t in tracks if (t["stream_id"], t["track_id"]) == (uri, track_id)]
        assert summary["observations"] == len(frames)
        assert summary["max_score"] == pytest.approx(max(t["score"] for t in frames))
        assert summary["duration_s"] == pytest.approx(max(t["pts_s"] for t in frames) - min(t["pts_s"] for t in frames))
        if summary["thumbnail_jpeg"] is not None:
            image = Image.open(io.BytesIO(summary["thumbnail_jpeg"]))
            assert image.format == "JPEG" and max(image.size) <= 128
    assert any(s["thumbnail_jpeg"] for s in summaries)
    events = _table(out, "events")
    assert {e["stream_id"] for e in events if e["type"] == "stream_end"} == set(done)

    # nothing changed: nothing runs, and the earlier failure still counts
    again = run_index(_job(archive, out), show_progress=False)
    assert (again.done, again.failed, again.up_to_date, again.failed_before) == (0, 0, 3, 1)
    assert again.exit_code == ExitCode.PARTIAL
    part_files = sorted(os.listdir(os.path.join(out, "tracks")))

    # the broken file repaired and retried; a new concept runs on the done files only for itself
    shutil.copy(os.path.join(videos, "a.mp4"), os.path.join(videos, "broken.mp4"))
    more = run_index(_job(archive, out, rules=(RED, GREEN), retry=True), show_progress=False)
    assert more.exit_code == ExitCode.OK and (more.done, more.failed) == (4, 0)
    catalog = _catalog(out)
    assert all(r["status"] == "done" and set(r["concepts"]) == {"red square", "green disc"} for r in catalog.values())
    assert set(part_files) <= set(os.listdir(os.path.join(out, "tracks")))  # the red rows were kept as they were
    tracks_after = _table(out, "tracks")
    red_before = sorted((t["stream_id"], t["track_id"], t["frame_index"]) for t in tracks)
    red_after = sorted((t["stream_id"], t["track_id"], t["frame_index"]) for t in tracks_after
                       if t["concept"] == "red square" and not t["stream_id"].endswith("broken.mp4"))
    assert red_after == red_before
    for uri, row in done.items():  # the green pass numbered its tracks after the red ones
        green = [t["track_id"] for t in tracks_after if t["stream_id"] == uri and t["concept"] == "green disc"]
        assert all(track_id >= row["next_track_id"] for track_id in green)
    keys = [(t["stream_id"], t["track_id"], t["frame_index"]) for t in tracks_after]
    assert len(keys) == len(set(keys))

    # DuckDB reads the dataset as it is
    con = duckdb.connect()
    per_file = con.execute(f"SELECT count(DISTINCT stream_id) FROM read_parquet('{out}/tracks/*.parquet')").fetchone()[0]
    assert per_file == len({t["stream_id"] for t in tracks_after})


def test_a_changed_file_replaces_its_rows(ray_session, archive, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(archive["videos"] / "a.mp4", videos / "clip.mp4")
    out = str(tmp_path / "dataset")
    job = _job(archive, out, sources=[str(videos) + "/"])
    assert run_index(job, show_progress=False).done == 1
    before = _catalog(out)[str(videos / "clip.mp4")]
    write_synthetic_video(videos / "clip.mp4", frames=20, size=(160, 120), fps=10)  # new content, same name
    again = run_index(job, show_progress=False)
    assert again.done == 1
    after = _catalog(out)[str(videos / "clip.mp4")]
    assert after["frames"] == 20 and after["parts"] != before["parts"]
    assert sorted(os.listdir(os.path.join(out, "tracks"))) == [f"{after['parts'][0]}.parquet"]
    ends = [e["frame_index"] for e in _table(out, "events") if e["type"] == "stream_end"]
    assert ends == [19]  # only the new content's rows: its 20 frames, the old part's 12 are gone


def test_a_killed_worker_gives_its_files_back_and_each_file_is_indexed_once(ray_session, archive, tmp_path):
    import ray

    videos = _videos(tmp_path, 6, frames=30)
    out = str(tmp_path / "dataset")
    job = _job(archive, out, sources=[str(tmp_path / "videos") + "/"], files_in_flight=2)
    killed = threading.Event()

    def kill_when_busy(workers):
        worker = next(iter(workers.values()))

        def kill():
            wait_for(lambda: ray.get(worker.frames.remote()) >= 5, "the worker to process frames")
            ray.kill(worker, no_restart=False)  # Ray restarts it; its files in flight go back to the queue
            killed.set()

        threading.Thread(target=kill, daemon=True).start()

    result = run_index(job, show_progress=False, on_started=kill_when_busy)
    assert killed.wait(HANG_GUARD_S)
    assert result.exit_code == ExitCode.OK and result.done == 6
    rows = _table(out, "files")
    assert sorted(r["uri"] for r in rows) == sorted(map(str, videos))  # one row each
    events = _table(out, "events")
    ends = [e["stream_id"] for e in events if e["type"] == "stream_end"]
    assert sorted(ends) == sorted(set(ends)) and len(ends) == 6  # no file's rows twice


def test_a_stopped_run_goes_on_with_the_same_command(ray_session, archive, tmp_path):
    videos = _videos(tmp_path, 4, frames=40)
    out = str(tmp_path / "dataset")
    job = _job(archive, out, sources=[str(tmp_path / "videos") + "/"], files_in_flight=1)
    stop = threading.Event()

    def stop_after_first_file(workers):
        def watch():
            events = os.path.join(out, "events")
            wait_for(lambda: os.path.isdir(events) and os.listdir(events), "a first file to complete")
            stop.set()

        threading.Thread(target=watch, daemon=True).start()

    first = run_index(job, show_progress=False, stop=stop, on_started=stop_after_first_file)
    assert first.stopped and 1 <= first.done < 4
    second = run_index(job, show_progress=False)
    assert second.done == 4 - first.done and second.up_to_date == first.done
    ends = [e["stream_id"] for e in _table(out, "events") if e["type"] == "stream_end"]
    assert sorted(ends) == sorted(map(str, videos))
