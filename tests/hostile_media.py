"""Hostile media for tests: files a camera, a phone or a bad download really produce, encoded with PyAV.

Each ``write_*`` function writes one case to the path it is given and returns that path. The
pictures are the synthetic shapes of :mod:`operators.synthetic`, so a handled case still gives
the tiny model something to see. Sizes and frame counts are kept small: the suite runs on two cores.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from operators.synthetic import synthetic_frame, write_synthetic_video


def _encode(path: Path, frames: list[np.ndarray], codec: str, pix_fmt: str, *, rate: int = 10,
            pts: list[int] | None = None, time_base: Fraction | None = None, fmt: str | None = None,
            container_options: dict[str, str] | None = None, codec_options: dict[str, str] | None = None) -> Path:
    """Encode RGB ``frames`` with ``codec``; ``pts`` (in ``time_base``) makes the timing irregular."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options=codec_options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _shapes(frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    return [synthetic_frame(i, size) for i in range(frames)]


def write_zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An .mp4 (aac) or .mkv (mp2) with one audio stream and no video."""
    codec = "mp2" if path.suffix == ".mkv" else "aac"
    rate = 44100 if codec == "mp2" else 48000
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        samples = int(seconds * rate)
        size = stream.codec_context.frame_size or 1152
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / rate)).astype(np.float32)
        layout_fmt = "fltp" if codec == "aac" else "s16"
        for start in range(0, samples - size + 1, size):
            chunk = tone[start:start + size][None]
            if layout_fmt == "s16":
                chunk = (chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(chunk, format=layout_fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_resolution_change(path: Path, first: tuple[int, int] = (160, 120), second: tuple[int, int] = (128, 96),
                            frames_each: int = 6) -> Path:
    """An MPEG-TS whose H.264 stream switches from ``first`` to ``second`` (width, height) mid-stream:
    two encodes concatenated, the second's timestamps continuing after the first's (as a camera
    that changes its resolution setting, or a broadcast at a programme boundary, produces)."""
    tb = Fraction(1, 90000)
    step = 9000  # 10 fps
    parts = []
    for k, size in enumerate((first, second)):
        part = path.with_name(f".{path.stem}-{k}.ts")
        pts = [(k * frames_each + i) * step for i in range(frames_each)]
        # no B-frames: the muxer would shift each part's timestamps by their reordering delay
        _encode(part, _shapes(frames_each, size), "libx264", "yuv420p", pts=pts, time_base=tb, fmt="mpegts",
                codec_options={"bf": "0"})
        parts.append(part)
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    for part in parts:
        part.unlink()
    return path


def write_rotated(path: Path, size: tuple[int, int] = (160, 120), frames: int = 8, degrees: int = 90) -> Path:
    """An MP4 as a phone records it held upright: landscape pixels stored, a display matrix in the
    track header saying players turn them by ``degrees`` (clockwise) to show them."""
    write_synthetic_video(path, frames=frames, size=size, fps=10)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0:
        raise AssertionError(f"{path}: no tkhd box to put a rotation into")
    version = data[at + 4]
    # tkhd after its type: version+flags 4, times/ids 20 (v0) or 32 (v1), reserved 8, layer..volume 8
    matrix_at = at + 4 + 4 + (20 if version == 0 else 32) + 8 + 8
    one, minus_one = 1 << 16, (-(1 << 16)) & 0xFFFFFFFF
    rotations = {90: (0, one, 0, minus_one, 0, 0), 180: (minus_one, 0, 0, minus_one, 0, 0),
                  270: (0, minus_one, 0, one, 0, 0)}
    a, b, u, c, d, v = rotations[degrees]
    struct.pack_into(">9I", data, matrix_at, a, b, u, c, d, v, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


def write_vfr(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """A Matroska file whose frames come at irregular intervals (a phone or a screen recorder)."""
    gaps_ms = [0, 33, 40, 100, 250, 17, 33, 500, 33, 66, 10, 90]
    pts = list(np.cumsum(gaps_ms).tolist())
    return _encode(path, _shapes(len(pts), size), "libx264", "yuv420p", pts=pts, time_base=Fraction(1, 1000))


def write_10bit(path: Path, size: tuple[int, int] = (160, 120), frames: int = 8) -> Path:
    """10-bit 4:2:0 video: HEVC Main 10 when this FFmpeg has libx265, else FFV1."""
    codec = "libx265" if "libx265" in av.codecs_available else "ffv1"
    options = {"x265-params": "log-level=error"} if codec == "libx265" else {}
    height, width = size[1], size[0]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        for image in _shapes(frames, size):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p10le")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_tiny(path: Path, size: tuple[int, int], frames: int = 4) -> Path:
    """Frames of an odd ``size`` such as 1x1 or 7x5 (FFV1 in Matroska: H.264 needs even sizes)."""
    width, height = size
    images = [np.full((height, width, 3), (40 * i) % 256, dtype=np.uint8) for i in range(frames)]
    return _encode(path, images, "ffv1", "yuv444p")


def write_8k(path: Path, frames: int = 2) -> Path:
    """7680x4320 H.264: a few plain frames compress to almost nothing, yet decode to 100 MB each."""
    return _encode(path, _shapes(frames, (7680, 4320)), "libx264", "yuv420p",
                   container_options={"movflags": "+faststart"})


def write_text_as_mp4(path: Path) -> Path:
    path.write_text("this is a shopping list, not a video\n- milk\n- eggs\n" * 20)
    return path


def write_png_as_mp4(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A still PNG image saved under a video name."""
    with av.open(str(path), "w", format="image2pipe") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(synthetic_frame(0, size), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_truncated(path: Path, *, index_first: bool, keep: float = 0.6, frames: int = 30) -> Path:
    """The first ``keep`` of an MP4, as an interrupted download leaves it; ``index_first`` puts the
    index (moov) before the media data, as streaming-friendly files have it."""
    full = path.with_name(f".{path.stem}-full.mp4")
    options = None if index_first else {}
    write_synthetic_video(full, frames=frames, size=(160, 120), fps=10, container_options=options)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_hls_missing_segments(directory: Path, segments: int = 3) -> Path:
    """An HLS playlist (finished: ``#EXT-X-ENDLIST``) listing segments that do not exist, so an
    HTTP server serving ``directory`` answers each of them with 404. Returns the playlist path."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:VOD"]
    for i in range(segments):
        lines += ["#EXTINF:1.0,", f"segment{i}.ts"]
    lines.append("#EXT-X-ENDLIST")
    playlist = directory / "index.m3u8"
    playlist.write_text("\n".join(lines) + "\n")
    return playlist
