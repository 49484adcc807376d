"""Video decoding, sampling, error reporting and writing, with real PyAV encodes (no mocks)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from operators.synthetic import shape_boxes, synthetic_frame, write_synthetic_video
from operators.video_source import FpsSampler, Frame, VideoSourceError, open_video
from operators.video_writer import VideoWriter, VideoWriterError

SIZE = (160, 120)  # (width, height)
FPS = 30
FRAMES = 60  # 2 s


def _decode_all(path, **kwargs) -> list[Frame]:
    with open_video(path, **kwargs) as source:
        return list(source)


def _colour_error(image: np.ndarray, index: int, size=SIZE, fps=FPS) -> float:
    return float(np.abs(image.astype(np.int16) - synthetic_frame(index, size, fps).astype(np.int16)).mean())


def _cut(path: Path, fraction: float) -> Path:
    """Truncate a copy of ``path`` near ``fraction`` of its size, inside a video packet where one spans that point."""
    data = path.read_bytes()
    end = int(len(data) * fraction)
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            if packet.pos is not None and packet.pos <= end < packet.pos + packet.size:
                end = packet.pos + packet.size // 2
                break
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[:end])
    return cut


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        # Default writer layout for MP4: index (moov) at the front.
        "faststart": write_synthetic_video(root / "faststart.mp4", FRAMES, SIZE, FPS),
        # FFmpeg's default layout: index written last.
        "index_last": write_synthetic_video(root / "index_last.mp4", FRAMES, SIZE, FPS, container_options={}),
        "mkv": write_synthetic_video(root / "clip.mkv", FRAMES, SIZE, FPS),
    }


# -- decoding and sampling --------------------------------------------------------------------


def test_every_frame_in_order_with_metadata(videos):
    with open_video(videos["faststart"]) as source:
        info = source.info
        frames = list(source)
    assert (info.width, info.height) == SIZE
    assert info.average_fps == pytest.approx(FPS)
    assert info.frame_count == FRAMES
    assert info.duration_s == pytest.approx(FRAMES / FPS)
    assert info.codec in {"h264", "mpeg4"}
    assert len(frames) == FRAMES and source.frames_decoded == FRAMES and not source.truncated
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.source_index for f in frames] == list(range(FRAMES))
    pts = np.array([f.pts_s for f in frames])
    assert np.all(np.diff(pts) > 0)
    np.testing.assert_allclose(pts, np.arange(FRAMES) / FPS, atol=1e-6)
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (SIZE[1], SIZE[0], 3)
        assert _colour_error(frame.image, frame.source_index) < 6.0


def test_fps_sampling_by_presentation_time(videos):
    frames = _decode_all(videos["faststart"], fps=5)
    assert [f.index for f in frames] == list(range(10))
    assert [f.source_index for f in frames] == list(range(0, FRAMES, 6))
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(10) / 5, atol=1e-6)
    for frame in frames:
        assert _colour_error(frame.image, frame.source_index) < 6.0


def test_fps_above_source_rate_keeps_every_frame(videos):
    assert len(_decode_all(videos["mkv"], fps=60)) == FRAMES


def test_sampler_serves_each_instant_once():
    sampler = FpsSampler(5.0)
    times = [0.0, 0.1, 0.1995, 0.21, 0.95, 0.99, 1.0, 1.05]
    # 0.1995 is a millisecond-rounded 0.2; 0.95 jumps over the 0.4/0.6/0.8 instants and serves one.
    assert [t for t in times if sampler.accept(t)] == [0.0, 0.1995, 0.95, 1.0]
    late_start = FpsSampler(5.0)
    assert [t for t in (3.3, 3.35, 3.4, 3.59, 3.61) if late_start.accept(t)] == [3.3, 3.4, 3.61]
    assert all(FpsSampler(None).accept(t) for t in (0.0, 0.0, -1.0))
    for bad in (0, -2.0, math.nan):
        with pytest.raises(ValueError):
            FpsSampler(bad)


def test_variable_frame_rate(tmp_path):
    ticks = [0, 1, 2, 10, 11, 30, 31, 45]  # in 1/30 s
    path = tmp_path / "vfr.mp4"
    with VideoWriter(path, 30, SIZE) as writer:
        for tick in ticks:
            writer.write(synthetic_frame(tick, SIZE, FPS), pts_s=tick / 30)
    all_frames = _decode_all(path)
    np.testing.assert_allclose([f.pts_s for f in all_frames], np.array(ticks) / 30, atol=1e-6)
    sampled = _decode_all(path, fps=5)
    np.testing.assert_allclose([f.pts_s for f in sampled], [0.0, 10 / 30, 1.0, 1.5], atol=1e-6)
    assert [f.source_index for f in sampled] == [0, 3, 5, 7]
    for frame in sampled:
        assert _colour_error(frame.image, ticks[frame.source_index]) < 6.0


def test_source_iterates_once(videos):
    source = open_video(videos["faststart"], fps=1)
    assert len(list(source)) == 2
    with pytest.raises(RuntimeError, match="only once"):
        iter(source)


# -- errors -----------------------------------------------------------------------------------


def _open_error(path, **kwargs) -> VideoSourceError:
    with pytest.raises(VideoSourceError) as caught:
        open_video(path, **kwargs)
    return caught.value


def test_missing_file_and_directory(tmp_path):
    error = _open_error(tmp_path / "nope.mp4")
    assert error.reason == "missing" and "nope.mp4" in str(error) and isinstance(error, ValueError)
    assert _open_error(tmp_path).reason == "not_video"


def test_text_and_garbage_files(tmp_path):
    # FFmpeg would render a .txt file as ANSI-art video frames.
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    assert _open_error(text).reason == "not_video"
    garbage = tmp_path / "fake.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    error = _open_error(garbage)
    assert error.reason == "open_failed" and "fake.mp4" in str(error)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    error = _open_error(path)
    assert error.reason == "not_video" and "audio" in str(error)


def test_unknown_codec_is_reported(videos, tmp_path):
    data = videos["index_last"].read_bytes()
    tag = b"avc1" if b"avc1" in data else b"mp4v"
    patched = tmp_path / "unknown_codec.mp4"
    patched.write_bytes(data.replace(tag, b"zzz1"))
    error = _open_error(patched)
    assert error.reason == "unsupported_codec" and "re-encode" in str(error)


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "empty.avi"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.start_encoding()
    container.close()
    source = open_video(path)  # opens fine: the stream exists
    with pytest.raises(VideoSourceError) as caught:
        list(source)
    assert caught.value.reason == "no_frames"


def test_undecodable_video_data(videos, tmp_path):
    data = bytearray(videos["index_last"].read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(bytes(data))
    source = open_video(zeroed)
    with pytest.raises(VideoSourceError) as caught:
        list(source)
    assert caught.value.reason == "no_frames" and source.decode_errors > 0


def test_truncated_mp4_with_index_last_fails_at_open(videos):
    error = _open_error(_cut(videos["index_last"], 0.6))
    assert error.reason == "open_failed" and "truncated" in str(error)


def test_truncated_mp4_delivers_frames_and_flags_truncation(videos):
    with open_video(_cut(videos["faststart"], 0.6)) as source:
        frames = list(source)  # FFmpeg ends quietly; the source compares with the header
    assert 20 <= len(frames) < FRAMES
    assert source.truncated
    assert [f.source_index for f in frames] == list(range(len(frames)))
    for frame in frames:
        assert _colour_error(frame.image, frame.source_index) < 6.0


def test_truncated_mp4_strict_decoding_raises_after_delivering(videos):
    # Without frame threading FFmpeg reports the partial last packet; with no tolerance it is fatal.
    source = open_video(_cut(videos["faststart"], 0.6), thread_type="SLICE", max_consecutive_errors=0)
    delivered = []
    with pytest.raises(VideoSourceError) as caught:
        for frame in source:
            delivered.append(frame)
    assert caught.value.reason == "corrupt" and "delivered" in str(caught.value)
    assert len(delivered) >= 20 and source.truncated
    assert [f.index for f in delivered] == list(range(len(delivered)))


def test_truncated_matroska_flagged_by_duration(videos):
    with open_video(_cut(videos["mkv"], 0.6)) as source:
        frames = list(source)
    assert source.info.frame_count is None  # Matroska declares no count, only a duration
    assert 20 <= len(frames) < FRAMES and source.truncated


# -- writer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [None, "mpeg4"])
def test_writer_round_trip(tmp_path, codec):
    size, fps, count = (96, 64), 8, 12
    path = write_synthetic_video(tmp_path / "out.mp4", count, size, fps, codec=codec)
    with open_video(path) as source:
        frames = list(source)
    assert source.info.codec == (codec or source.info.codec)
    assert len(frames) == count
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(count) / fps, atol=1e-6)
    for frame in frames:
        assert frame.image.shape == (size[1], size[0], 3)
        assert _colour_error(frame.image, frame.index, size, fps) < 8.0
        # The red square's centre is red.
        x0, y0, x1, y1 = shape_boxes(frame.index / fps, size)["red_square"]
        r, g, b = frame.image[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
        assert r > 180 and g < 90 and b < 90


def test_writer_pads_odd_sizes_and_validates(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 10, (95, 63), codecs=("mpeg4",)) as writer:
        assert writer.codec == "mpeg4"
        with pytest.raises(VideoWriterError, match=r"\(63, 95, 3\)"):
            writer.write(np.zeros((64, 96, 3), np.uint8))
        with pytest.raises(VideoWriterError):
            writer.write(np.zeros((63, 95, 3), np.float32))
        for _ in range(3):
            writer.write(np.full((63, 95, 3), 200, np.uint8))
    assert writer.frames_written == 3
    with pytest.raises(VideoWriterError, match="closed"):
        writer.write(np.zeros((63, 95, 3), np.uint8))
    frames = _decode_all(path)
    assert len(frames) == 3 and frames[0].image.shape == (64, 96, 3)
    assert abs(float(frames[0].image.mean()) - 200) < 4


def test_writer_without_usable_encoder(tmp_path):
    with pytest.raises(VideoWriterError, match="mpeg4"):
        VideoWriter(tmp_path / "x.mp4", 10, (64, 48), codecs=("no_such_encoder",))


def test_synthetic_video_is_deterministic(tmp_path):
    first = _decode_all(write_synthetic_video(tmp_path / "a.mp4", 5, SIZE, FPS))
    second = _decode_all(write_synthetic_video(tmp_path / "b.mp4", 5, SIZE, FPS))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second, strict=True))
    assert np.array_equal(synthetic_frame(3, SIZE, FPS), synthetic_frame(3, SIZE, FPS))
