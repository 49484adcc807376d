"""Storage faults through the real pipeline: a Parquet path that cannot be written, and a disk that
fills up mid-job (a small tmpfs mounted for the test). The streams fail with one line naming the
path, leave no partial file, the job returns, and ``--resume`` finishes them once space is back
without writing any row twice."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.resume_point import StreamState
from operators.sinks.parquet_sink import open_dataset
from operators.synthetic import write_synthetic_video
from pipeline.cli import main
from pipeline.driver import run_job
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import BackgroundJob, wait_for
from tests.job_files import streams_from, write_job

FRAMES = 40  # long enough that the disk fills while the streams still run (the tiny model slows as objects pile up)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage-media")
    return {"video": write_synthetic_video(root / "long.mp4", frames=FRAMES, size=(160, 120), fps=10),
            "checkpoint": write_random_checkpoint(root / "tiny")}


@contextlib.contextmanager
def _tmpfs(directory: Path, options: str):
    """A tmpfs mounted on ``directory`` for the test; skips where this process may not mount."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the full-disk and read-only cases need a real mount)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _job(tmp_path: Path, inputs, name: str, out: Path, streams: list[str]) -> Path:
    return write_job(tmp_path / f"{name}.yaml", checkpoint=inputs["checkpoint"], parquet=out,
                     streams=streams_from(dict.fromkeys(streams, inputs["video"])))


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def _no_partial_files(out: Path) -> None:
    visible = list(out.rglob("*.parquet"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left behind"
    for path in visible:
        pq.read_metadata(path)  # every file a reader can see is whole


@pytest.mark.parametrize("where", ["read-only mount", "under a regular file"])
def test_a_path_that_cannot_be_written_is_refused_in_one_line(inputs, tmp_path, capsys, where):
    """Every stream would fail on its first flush: the job is refused before anything starts."""
    with contextlib.ExitStack() as stack:
        if where == "read-only mount":
            out = stack.enter_context(_tmpfs(tmp_path / "readonly", "ro,size=1m")) / "out"
        else:
            (tmp_path / "file").write_text("a file, not a directory")
            out = tmp_path / "file" / "out"
        job = _job(tmp_path, inputs, "readonly", out, ["a", "b"])
        assert main(["run", str(job), "--no-progress"]) == 2
        if where == "read-only mount":
            assert not any(out.parent.iterdir())  # nothing was written, not even part of a file
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"sam3-stream: error: {job}: sinks.parquet.path: cannot write to {out} ("), lines


@pytest.mark.slow
def test_a_full_disk_fails_the_streams_and_resume_finishes_them(ray_session, inputs, tmp_path):
    streams = ["a", "b"]
    with _tmpfs(tmp_path / "small", "size=16m") as disk:
        out = disk / "out"
        job = _job(tmp_path, inputs, "fulldisk", out, streams)
        background = BackgroundJob(job)
        background.start()
        held = [out / "_checkpoints" / "fulldisk" / f"{sid}.json" for sid in streams]
        wait_for(lambda: all(p.exists() for p in held), "a resume point of each stream on disk")
        filler = _fill(disk)
        background.join()  # the job returns: no stream hangs on the full disk
        result = background.result()
        assert result.exit_code == 3
        for sid in streams:
            stats = result.streams[sid]
            assert stats.state is StreamState.FAILED, stats
            assert stats.counters.frames_processed < FRAMES, stats.counters  # it stopped when the disk filled
            assert str(out) in stats.error and "No space left" in stats.error and "\n" not in stats.error
            assert stats.counters.restarts == 0
        _no_partial_files(out)

        filler.unlink()  # space is back
        resumed = run_job(str(job), show_progress=False, resume=True)
        assert resumed.exit_code == 0, resumed.streams
        for sid in streams:
            assert resumed.streams[sid].state is StreamState.FINISHED
            assert resumed.streams[sid].counters.frames_processed == FRAMES, resumed.streams[sid].counters
        _no_partial_files(out)
        tracks = open_dataset(out, "tracks").to_table(columns=["stream_id", "frame_index", "track_id"]).to_pylist()
        events = open_dataset(out, "events").to_table(columns=["stream_id", "event_id", "type"]).to_pylist()
    keys = [(r["stream_id"], r["frame_index"], r["track_id"]) for r in tracks]
    assert len(keys) == len(set(keys)), "a track row was written twice"
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was written twice"
    for sid in streams:
        assert max(frame for s, frame, _ in keys if s == sid) >= FRAMES - 5  # tracks go on to the end
        assert [e["type"] for e in events if e["stream_id"] == sid].count("stream_end") == 1
