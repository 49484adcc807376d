"""Encode RGB frames to a video file with PyAV (used for overlays and synthetic test videos)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

logger = logging.getLogger(__name__)

# H.264 plays everywhere; MPEG-4 part 2 is built into every FFmpeg, so it is the last resort.
DEFAULT_CODECS: tuple[str, ...] = ("libx264", "libopenh264", "mpeg4")

# Moving the index to the front lets browsers start playing before the download ends.
_FASTSTART = {"movflags": "+faststart"}
_FASTSTART_FORMATS = (".mp4", ".mov", ".m4v")


class VideoWriterError(ValueError):
    """A video file cannot be written; the message says what to do."""


def _rate(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    else:
        if not math.isfinite(fps):
            raise VideoWriterError(f"fps must be a positive finite number, got {fps!r}.")
        # 1001 keeps NTSC rates such as 29.97 exact enough for players.
        rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise VideoWriterError(f"fps must be positive, got {fps!r}.")
    return rate


def _first_working_encoder(codecs: Sequence[str], width: int, height: int, rate: Fraction) -> str:
    """Return the first encoder that FFmpeg can actually open (a listed one may still need missing hardware)."""
    tried = []
    for name in codecs:
        try:
            probe = av.CodecContext.create(name, "w")
            probe.width, probe.height = width, height
            probe.pix_fmt = "yuv420p"
            probe.time_base = 1 / rate
            probe.open()
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            tried.append(f"{name} ({exc})")
            continue
        return name
    raise VideoWriterError(
        f"None of the video encoders {list(codecs)} works in this FFmpeg build ({'; '.join(tried)}); "
        "pass codecs=('mpeg4',), which every FFmpeg has."
    )


class VideoWriter:
    """Writes uint8 RGB frames of one fixed size to a video file; use as a context manager.

    ``size`` is ``(width, height)``. The encoder is the first of ``codecs`` that opens.
    Odd sizes are padded by one edge pixel because 4:2:0 encoders need even sizes.
    ``close()`` flushes the encoder and finalises the file; it is idempotent.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | Fraction,
        size: tuple[int, int],
        *,
        codecs: Sequence[str] = DEFAULT_CODECS,
        container_options: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise VideoWriterError(f"size must be (width, height) with positive values, got {size!r}.")
        self.size = (width, height)
        self.rate = _rate(fps)
        self._time_base = 1 / self.rate
        self._encoded_size = (width + width % 2, height + height % 2)
        if self._encoded_size != self.size:
            logger.info(
                "%s: padding %dx%d frames to %dx%d for the encoder", self.path, width, height, *self._encoded_size
            )
        self.codec = _first_working_encoder(codecs, *self._encoded_size, self.rate)
        if container_options is None:
            container_options = _FASTSTART if self.path.suffix.lower() in _FASTSTART_FORMATS else {}

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), mode="w", options=dict(container_options))
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise VideoWriterError(
                f"Cannot create video file {self.path} ({exc}); use a writable path ending in .mp4, .mkv or .avi."
            ) from exc
        self._stream = self._container.add_stream(self.codec, rate=self.rate)
        self._stream.width, self._stream.height = self._encoded_size
        self._stream.pix_fmt = "yuv420p"
        self._configure_quality()
        self.frames_written = 0
        self._next_pts = 0
        self._closed = False

    def _configure_quality(self) -> None:
        context = self._stream.codec_context
        if self.codec == "libx264":
            context.options = {"crf": "20", "preset": "veryfast"}
        else:
            # Bit-rate encoders default to ~200 kb/s, far too little for readable overlays.
            width, height = self._encoded_size
            self._stream.bit_rate = int(min(max(width * height * float(self.rate) * 0.25, 1e6), 50e6))

    def write(self, image: np.ndarray, pts_s: float | None = None) -> None:
        """Append one frame (uint8 RGB [H, W, 3]).

        Frames are spaced ``1 / fps`` apart unless ``pts_s`` is given; timestamps are rounded to
        the ``1 / fps`` grid and pushed forward where they would not increase.
        """
        if self._closed:
            raise VideoWriterError(f"VideoWriter for {self.path} is closed; open a new one to write more frames.")
        array = np.asarray(image)
        width, height = self.size
        if array.dtype != np.uint8 or array.shape != (height, width, 3):
            raise VideoWriterError(
                f"Frames for {self.path} must be uint8 RGB arrays of shape ({height}, {width}, 3), "
                f"got {array.dtype} {array.shape}; convert or resize the frame first."
            )
        pad_w, pad_h = self._encoded_size[0] - width, self._encoded_size[1] - height
        if pad_w or pad_h:
            array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        pts = self._next_pts
        if pts_s is not None:
            pts = max(pts, round(pts_s * self.rate))
        frame.pts = pts
        frame.time_base = self._time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._next_pts = pts + 1
        self.frames_written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
        if self.frames_written == 0:
            logger.warning("No frames were written, so %s was not created.", self.path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
