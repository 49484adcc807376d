"""``sam3-stream index``'s arguments: bad input in one line (exit 2), nothing to do without starting Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from operators.storage import resolve
from operators.synthetic import write_synthetic_video
from pipeline.cli import main
from pipeline.index.catalog import Catalog, WorkItem, catalog_row
from pipeline.index.inputs import list_archive


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("args, expected", [
    (["rtsp://cam.local/live", "--concept", "a"], "SOURCE: rtsp:// is a live stream"),
    (["videos/", "--concept", "a", "--fps", "-2"], "--fps: "),
    (["videos/", "--concept", "a", "--engines", "0"], "--engines: "),
    (["videos/", "--concept", "   "], "--concept/--watchlist: "),
    (["videos/", "--watchlist", "missing.yaml"], "unknown watchlist"),
    (["no-such-folder/", "--concept", "a"], "no-such-folder"),
])
def test_bad_arguments_exit_2_with_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "videos").mkdir()
    write_synthetic_video(tmp_path / "videos" / "a.mp4", frames=2, size=(32, 32), fps=5)
    code = main(["index", *args, "--out", str(tmp_path / "ds"), "--checkpoint", "tiny", "--no-progress"])
    assert code == 2
    line = _error_line(capsys)
    assert expected in line and "Traceback" not in line


def test_concepts_are_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "videos/", "--out", "ds"])
    assert exit_info.value.code == 2
    assert "--concept" in capsys.readouterr().err


def test_nothing_to_do_ends_before_starting_ray(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_synthetic_video(videos / name, frames=2, size=(32, 32), fps=5)
    out = tmp_path / "ds"
    catalog = Catalog.load(resolve(str(out)))
    rows = []
    for file in list_archive([str(videos) + "/"]):
        item = WorkItem(file, ("red square",), ("red square",), (), (), 0, "new")
        rows.append(catalog_row(item, status="done", error=None, duration_s=0.4, frames=2, fps=5.0,
                                checkpoint="tiny-ckpt", run_id="r1", processing_s=0.1, next_track_id=0, parts=["p"]))
    catalog.append(rows, "r1")
    # RAY_ADDRESS points nowhere: had the command tried to start or join Ray, it would fail
    env = {"RAY_ADDRESS": "127.0.0.1:1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "index", f"{videos}/", "--out", str(out),
                           "--concept", "red square", "--checkpoint", "tiny-ckpt", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 up to date" in done.stderr and "nothing to do" in done.stderr
