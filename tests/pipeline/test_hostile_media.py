"""Hostile media through the real pipeline: each case is handled or fails its own stream with one
clear line; no actor dies, nothing hangs, and a healthy stream beside them gets all its frames.

One job (local Ray, the tiny random checkpoint, real PyAV decoding, a local HTTP server for the
HLS case) with one stream per case; ``CASES`` says what each must do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from operators.resume_point import StreamState
from operators.sinks.parquet_sink import open_dataset
from operators.synthetic import synthetic_frame, write_synthetic_video
from operators.video_source import MAX_FRAME_SIDE, open_video
from pipeline.driver import run_job
from sam3_runtime.model import write_random_checkpoint
from tests import hostile_media as hm
from tests.http_files import http_files
from tests.job_files import streams_from, write_job


@dataclass(frozen=True)
class Case:
    write: object  # (directory) -> path of the medium
    frames: int | None  # handled: FINISHED with this many frames processed; None: FAILED
    error: str = ""  # FAILED: the stream_error names the problem with these words
    failed_after: int = 0  # FAILED: frames processed before the failure (a truncated file's good part)


CASES: dict[str, Case] = {
    "zero-byte": Case(lambda d: hm.write_zero_byte(d / "zero.mp4"), None, "is empty (0 bytes)"),
    "audio-mp4": Case(lambda d: hm.write_audio_only(d / "tone.mp4"), None, "has no video stream (found: audio)"),
    "audio-mkv": Case(lambda d: hm.write_audio_only(d / "tone.mkv"), None, "has no video stream (found: audio)"),
    "resolution-change": Case(lambda d: hm.write_resolution_change(d / "switch.ts"), 12),  # scaled to the first size
    "rotated": Case(lambda d: hm.write_rotated(d / "phone.mp4"), 8),
    "vfr": Case(lambda d: hm.write_vfr(d / "vfr.mkv"), 12),
    "ten-bit": Case(lambda d: hm.write_10bit(d / "tenbit.mp4"), 8),
    "one-pixel": Case(lambda d: hm.write_tiny(d / "one.mkv", (1, 1)), 4),
    "seven-by-five": Case(lambda d: hm.write_tiny(d / "seven.mkv", (7, 5)), 4),
    "eight-k": Case(lambda d: hm.write_8k(d / "8k.mp4"), 2),  # delivered at 3840x2160
    "text": Case(lambda d: hm.write_text_as_mp4(d / "notes.mp4"), None, "it is not a media file"),
    "png": Case(lambda d: hm.write_png_as_mp4(d / "photo.mp4"), None, "is a still image"),
    "truncated-index-first": Case(lambda d: hm.write_truncated(d / "cut-front.mp4", index_first=True), None,
                                  "the file is truncated", failed_after=12),
    "truncated-index-last": Case(lambda d: hm.write_truncated(d / "cut-end.mp4", index_first=False), None,
                                 "corrupt or truncated"),
    "hls-404": Case(lambda d: hm.write_hls_missing_segments(d / "hls"), None,
                    "segment segment0.ts answers HTTP 404"),
    "healthy": Case(lambda d: write_synthetic_video(d / "healthy.mp4", frames=20, size=(160, 120)), 20),
}


@pytest.mark.slow
def test_hostile_media_end_each_stream_cleanly(ray_session, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    paths = {name: case.write(media) for name, case in CASES.items()}
    checkpoint = write_random_checkpoint(tmp_path / "tiny")
    with http_files(paths["hls-404"].parent) as host:
        sources = {**paths, "hls-404": f"http://{host}/{paths['hls-404'].name}"}
        job = write_job(tmp_path / "hostile.yaml", checkpoint=checkpoint, streams=streams_from(sources),
                        parquet=tmp_path / "out", max_batch=4)
        result = run_job(str(job), show_progress=False)  # returns: no case hangs the job

    assert set(result.streams) == set(CASES)
    events = open_dataset(tmp_path / "out", "events").to_table().to_pylist()
    errors = {e["stream_id"]: e["error"] for e in events if e["type"] == "stream_error"}
    for name, case in CASES.items():
        stats = result.streams[name]
        assert stats.counters.restarts == 0 and stats.counters.engine_restarts == 0, (name, stats)
        if case.frames is not None:
            assert stats.state is StreamState.FINISHED, (name, stats.error)
            assert stats.counters.frames_processed == case.frames, (name, stats.counters)
            assert name not in errors, (name, errors.get(name))
            continue
        assert stats.state is StreamState.FAILED, (name, stats)
        assert stats.counters.frames_processed == case.failed_after, (name, stats.counters)
        error = errors.get(name)
        assert error == stats.error, (name, error, stats.error)  # the event says what the job reports
        assert case.error in error and "\n" not in error and "Traceback" not in error, (name, error)
    assert result.exit_code == 3  # partial: some streams failed, the job itself did not

    tracks = open_dataset(tmp_path / "out", "tracks").to_table(columns=["stream_id", "box_xyxy"]).to_pylist()
    rotated = [r["box_xyxy"] for r in tracks if r["stream_id"] == "rotated"]
    assert all(box[2] <= 120 and box[3] <= 160 for box in rotated), rotated[:3]  # upright: 120 wide, 160 tall


def test_rotated_video_comes_out_upright(tmp_path):
    """A phone video's display matrix is applied: the pixels are what a player shows."""
    path = hm.write_rotated(tmp_path / "phone.mp4", size=(160, 120), frames=3)
    with open_video(path) as video:
        frames = list(video)
    assert video.frame_size == (120, 160)
    for frame in frames:
        upright = np.rot90(synthetic_frame(frame.index, (160, 120)), -1)  # turned clockwise, as players do
        assert frame.image.shape == upright.shape
        assert np.abs(frame.image.astype(int) - upright).mean() < 6  # lossy H.264, same picture


def test_frames_keep_the_stream_size(tmp_path):
    """A mid-stream resolution switch is scaled to the first size; an 8K frame to at most 4K UHD."""
    with open_video(hm.write_resolution_change(tmp_path / "switch.ts")) as video:
        shapes = [frame.image.shape for frame in video]
    assert shapes == [(120, 160, 3)] * 12
    with open_video(hm.write_8k(tmp_path / "8k.mp4", frames=1)) as video:
        (frame,) = list(video)
    assert frame.image.shape == (MAX_FRAME_SIDE * 9 // 16, MAX_FRAME_SIDE, 3)


def test_files_of_a_directory_share_the_first_files_size(tmp_path):
    from operators.sources import stream_frames

    folder = tmp_path / "clips"
    folder.mkdir()
    write_synthetic_video(folder / "a.mp4", frames=3, size=(160, 120))
    write_synthetic_video(folder / "b.mp4", frames=3, size=(320, 240))
    assert {frame.image.shape for frame in stream_frames(f"{folder}/")} == {(120, 160, 3)}


def test_hls_with_missing_segments_fails_with_the_segment(tmp_path):
    from operators.sources import stream_frames
    from operators.video_source import VideoSourceError

    playlist = hm.write_hls_missing_segments(tmp_path / "hls")
    guard = time.monotonic() + 60  # only ends a source that would retry forever, so the test fails instead
    with http_files(playlist.parent) as host, pytest.raises(VideoSourceError) as caught:
        list(stream_frames(f"http://{host}/{playlist.name}", should_stop=lambda: time.monotonic() > guard))
    assert caught.value.reason == "missing" and "segment0.ts answers HTTP 404" in str(caught.value)
