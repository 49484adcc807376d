"""``sam3-stream track``: records and overlays from a real video, partial output on a broken one."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

from operators.synthetic import write_synthetic_video
from pipeline.cli import main
from sam3_runtime.masks import decode_rle
from sam3_runtime.model import write_random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=8, size=(160, 120), fps=10)


def _track(checkpoint, video, *extra):
    return main(["track", str(video), "--checkpoint", checkpoint, "--quiet", "--threshold", "0.2", *extra])


def test_jsonl_records_follow_the_output_contract(checkpoint, video, tmp_path):
    out = tmp_path / "tracks.jsonl"
    assert _track(checkpoint, video, "--prompt", "red square", "--box", "10,10,60,50", "--out", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records
    frames = sorted({r["frame_index"] for r in records})
    assert frames[0] == 0 and frames[-1] <= 7
    boxed = [r for r in records if r["concept"] == "box"]
    assert boxed and {r["track_id"] for r in boxed} == {0}  # the box was the first object of the stream
    for r in records:
        assert set(r) >= {"frame_index", "pts_s", "track_id", "concept", "score", "box_xyxy", "mask", "area_px"}
        mask = decode_rle([r["mask"]])[0]
        assert mask.shape == (120, 160) and mask.sum() == r["area_px"] > 0
        x0, y0, x1, y1 = r["box_xyxy"]
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
    pts = {r["frame_index"]: r["pts_s"] for r in records}
    assert all(abs(pts[f] - f / 10) < 1e-6 for f in pts)


def test_parquet_output_and_overlay_video(checkpoint, video, tmp_path):
    out, overlay = tmp_path / "tracks.parquet", tmp_path / "overlay.mp4"
    assert _track(checkpoint, video, "--prompt", "red square", "--box", "10,10,60,50", "--out", str(out),
                  "--overlay", str(overlay)) == 0
    table = pq.read_table(out)
    assert table.num_rows > 0 and "mask" in table.column_names
    with av.open(str(overlay)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (120, 160, 3)


def test_fps_sampling(checkpoint, video, tmp_path, caplog):
    out = tmp_path / "tracks.jsonl"
    with caplog.at_level("INFO"):
        assert _track(checkpoint, video, "--box", "10,10,60,50", "--fps", "5", "--out", str(out)) == 0
    assert "for 4 frames" in caplog.text  # 8 frames at 10 fps sampled at 5 fps
    for line in out.read_text().splitlines():
        r = json.loads(line)
        assert r["pts_s"] == pytest.approx(r["frame_index"] * 0.2)


def test_truncated_video_keeps_what_was_decoded(checkpoint, tmp_path, caplog):
    good = write_synthetic_video(tmp_path / "long.mkv", frames=40, size=(160, 120), fps=10)
    broken = tmp_path / "broken.mkv"
    data = Path(good).read_bytes()
    broken.write_bytes(data[: int(len(data) * 0.6)] + b"\x00" * 4096 + data[int(len(data) * 0.6) : int(len(data) * 0.62)])
    out = tmp_path / "tracks.jsonl"
    code = _track(checkpoint, broken, "--box", "10,10,60,50", "--out", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 3
    assert "truncated" in caplog.text
    assert 0 < len({r["frame_index"] for r in records}) < 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "10,10,10,50"], "has no area"),
        (["--box", "10,10,400,50"], "outside the 160x120 video"),
        ([], "nothing to track"),
        (["--prompt", "car", "--out", "x.csv"], "use a .jsonl or .parquet"),
    ],
)
def test_bad_arguments_exit_2(checkpoint, video, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _track(checkpoint, video, *args) == 2
    assert message in capsys.readouterr().err


def test_missing_and_non_video_files_exit_2(checkpoint, tmp_path, capsys):
    assert _track(checkpoint, tmp_path / "nope.mp4", "--prompt", "car") == 2
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    assert _track(checkpoint, text, "--prompt", "car") == 2
    err = capsys.readouterr().err
    assert err.count("sam3-stream: error:") == 2
