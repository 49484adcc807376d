"""Decode a video file or stream into RGB frames with PyAV, optionally resampled to a target rate.

Error policy (every failure is a :class:`VideoSourceError`, a ``ValueError``):

* Problems visible when opening (missing or empty file, not a media file, no video stream, a codec
  this FFmpeg build cannot decode) raise from :func:`open_video` itself, before any frame.
* Problems met while decoding raise lazily, from the iterator, only after every frame decoded so
  far has been yielded, so a caller can keep what it got. A damaged packet is skipped (FFmpeg's
  own behaviour); decoding gives up when ``max_consecutive_errors`` packets in a row fail or
  when the demuxer itself fails.
* A file that ends cleanly but earlier than its header declares (fewer frames than the declared
  count, or ending well before the declared duration) is *not* an error, because headers can
  legitimately disagree with the decodable frames (edit lists, audio longer than video,
  estimated durations). The source sets ``truncated = True`` and logs a warning instead; check
  it after iterating when completeness matters.

PyAV/FFmpeg behaviours this relies on (measured with av 18 / FFmpeg 8):

* An MP4 cut short with its index (``moov`` atom) at the end cannot be opened at all
  ("Invalid data found"), so no frame is recoverable: that is an open-time error here.
* An MP4 with its index at the front (``movflags=faststart``) or a Matroska file cut short
  decodes every complete packet and then simply ends. With slice or no threading FFmpeg
  reports the partial last packet as an error (which is skipped); with frame threading it may
  drop the last one or two frames before the cut without reporting anything. Use
  ``thread_type="SLICE"`` when exact error reporting matters more than decode speed.
* FFmpeg's ``tty`` demuxer opens any ``.txt`` file as an ANSI-art "video", and its image demuxers
  open a still picture (even one named ``.mp4``) as a one-frame "video"; both are rejected here.

Frames come out as players show them, in one size per stream: a display matrix (a phone held
upright) is applied; the first frame fixes ``frame_size``, capped at ``max_side`` pixels a side (an
8K frame costs 100 MB a copy, and masks are made at frame size); a later frame of another size (a
camera switching resolution) is scaled to it, so tracks go on. Boxes and masks are in these pixels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from operators.redaction import redact_text, redact_url

logger = logging.getLogger(__name__)

ErrorReason = Literal["missing", "open_failed", "not_video", "unsupported_codec", "no_frames", "corrupt"]

# Demuxers that turn text files into pictures of text; accepting them would make
# `track notes.txt` "work" on rendered characters.
_TEXT_FORMATS = frozenset({"tty"})

# Timestamps in millisecond time bases (Matroska, FLV) are rounded; a frame nominally on a
# sampling instant may sit up to half a tick before it.
_SAMPLING_TOLERANCE_S = 1e-3
# The longest frame side delivered (4K UHD): the model sees 1008x1008 anyway, and masks are made
# at the frame's size, so larger frames only cost memory.
MAX_FRAME_SIDE = 3840


class VideoSourceError(ValueError):
    """A video cannot be opened or decoded; ``reason`` says which case, the message what to do."""

    def __init__(self, message: str, *, reason: ErrorReason, source: str) -> None:
        super().__init__(message)
        self.reason: ErrorReason = reason
        self.source = source


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded frame.

    ``index`` counts emitted frames (0, 1, 2, ... after sampling); ``source_index`` counts all
    decoded frames of the stream; ``pts_s`` is the presentation time in seconds from the
    stream's start; ``image`` is uint8 RGB with shape [H, W, 3].
    """

    index: int
    source_index: int
    pts_s: float
    image: np.ndarray


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the container declares about the video stream; ``None`` where it does not say."""

    width: int
    height: int
    average_fps: float | None
    duration_s: float | None
    frame_count: int | None
    codec: str
    container_format: str


class FpsSampler:
    """Picks frames so that at most one is kept per sampling instant ``k / fps``.

    A frame is kept when its time reaches the next instant not yet served; a frame that jumps
    over several instants (a gap in a variable-rate stream) serves only one of them. The first
    frame is always kept, wherever the stream starts. ``fps=None`` keeps every frame.
    """

    def __init__(self, fps: float | None, tolerance_s: float = _SAMPLING_TOLERANCE_S) -> None:
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number or None, got {fps!r}")
        self.fps = fps
        self._tolerance_s = tolerance_s
        self._next_slot: int | None = None

    def accept(self, pts_s: float) -> bool:
        if self.fps is None:
            return True
        slot = math.floor((pts_s + self._tolerance_s) * self.fps)
        if self._next_slot is not None and slot < self._next_slot:
            return False
        self._next_slot = slot + 1
        return True


def open_video(source: str | os.PathLike[str], fps: float | None = None, **options) -> VideoSource:
    """Open a video file or stream URL; ``options`` are :class:`VideoSource`'s keyword arguments."""
    return VideoSource(source, fps, **options)


def _capped(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down, aspect kept, so that its longer side is at most ``max_side``."""
    scale = max_side / max(size)
    return size if scale >= 1 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file:")


class VideoSource:
    """A single-pass iterator of :class:`Frame` over one video stream; also a context manager.

    ``fps`` resamples by presentation time (see :class:`FpsSampler`); ``None`` keeps every frame.
    ``thread_type`` is PyAV's decoder threading ("AUTO", "FRAME", "SLICE" or "NONE").
    ``options`` and ``timeout_s`` go to ``av.open`` (e.g. ``{"rtsp_transport": "tcp"}``).
    ``frame_size`` (width, height) and ``max_side``: see the module docstring. After iteration, ``frames_decoded``, ``frames_emitted``, ``decode_errors`` and ``truncated``
    describe what happened.
    """

    def __init__(self, source: str | os.PathLike[str], fps: float | None = None, *, thread_type: str = "AUTO",
                 max_consecutive_errors: int = 50, options: Mapping[str, str] | None = None,
                 timeout_s: float | None = None, frame_size: tuple[int, int] | None = None,
                 max_side: int = MAX_FRAME_SIDE) -> None:
        if max_consecutive_errors < 0:
            raise ValueError(f"max_consecutive_errors must be >= 0, got {max_consecutive_errors}")
        self.source = os.fspath(source)
        self.shown = redact_url(self.source)  # what logs and errors name: a URL's credentials masked
        self._sampler = FpsSampler(fps)
        self._max_consecutive_errors = max_consecutive_errors
        self.frames_decoded = 0
        self.frames_emitted = 0
        self.decode_errors = 0
        self.truncated = False
        self._started = False
        self._last_pts_s: float | None = None
        self._origin_pts: int | None = None
        self.frame_size = frame_size  # (width, height) of every delivered frame; None: the first frame's
        self._max_side = max_side
        self._size_changed = False

        self._container = self._open_container(options, timeout_s)
        try:
            self._stream = self._select_stream()
            self._stream.thread_type = thread_type
            self.info = self._read_info()
        except BaseException:
            self._container.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _error(self, message: str, reason: ErrorReason) -> VideoSourceError:
        return VideoSourceError(message, reason=reason, source=self.shown)

    def _open_container(
        self, options: Mapping[str, str] | None, timeout_s: float | None
    ) -> av.container.InputContainer:
        name = self.source
        if not _is_url(name):
            path = Path(name)
            if not path.exists():
                where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
                raise self._error(f"Video file not found: {name}{where}; check the path.", "missing")
            if path.is_dir():
                raise self._error(f"{name} is a directory, not a video file; pass a single video file.", "not_video")
            if path.stat().st_size == 0:
                raise self._error(f"{name} is empty (0 bytes); an interrupted copy or download? Copy it again.",
                                  "no_frames")
        try:
            return av.open(name, mode="r", options=dict(options or {}), timeout=timeout_s)
        except (av.error.FFmpegError, OSError) as exc:
            if _is_url(name):
                message = (
                    f"Cannot open video stream {self.shown} ({redact_text(str(exc), name)}); check the address, "
                    "credentials and that it is reachable."
                )
            else:
                message = (
                    f"Cannot read {name} as a video ({exc}): it is not a media file, or it is corrupt or truncated "
                    "(an MP4 cut short loses its index); check that it plays in a media player or re-encode it."
                )
            raise self._error(message, "open_failed") from exc

    def _select_stream(self) -> av.video.stream.VideoStream:
        container = self._container
        if container.format.name in _TEXT_FORMATS:
            raise self._error(f"{self.shown} is a text file, not a video; pass a video file.", "not_video")
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise self._error(f"{self.shown} is a still image ({container.format.name}), not a video; pass a video "
                              "file, or segment images with `sam3-stream segment`.", "not_video")
        if not container.streams.video:
            found = ", ".join(sorted({s.type for s in container.streams})) or "no streams at all"
            raise self._error(
                f"{self.shown} has no video stream (found: {found}); pass a file that contains video.", "not_video"
            )
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise self._error(
                f"The video codec of {self.shown} cannot be decoded by this FFmpeg build; re-encode it to H.264, "
                "e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`.",
                "unsupported_codec",
            )
        return stream

    def _read_info(self) -> VideoInfo:
        stream, container = self._stream, self._container
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration is not None and stream.time_base is not None:
            duration_s: float | None = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = None
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            average_fps=float(rate) if rate else None,
            duration_s=duration_s,
            frame_count=stream.frames or None,
            codec=stream.codec_context.name,
            container_format=container.format.name,
        )

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError("A VideoSource can be iterated only once; open the video again to re-read it.")
        self._started = True
        return self._frames()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _frames(self) -> Iterator[Frame]:
        try:
            for decoded in self._decode():
                source_index = self.frames_decoded
                self.frames_decoded += 1
                pts_s = self._pts_seconds(decoded)
                self._last_pts_s = pts_s
                if not self._sampler.accept(pts_s):
                    continue
                # Convert only kept frames: colour conversion costs more than decoding at low fps.
                image = self._to_rgb(decoded)
                yield Frame(index=self.frames_emitted, source_index=source_index, pts_s=pts_s, image=image)
                self.frames_emitted += 1
            self._check_complete()
        finally:
            self.close()

    def _to_rgb(self, decoded: av.VideoFrame) -> np.ndarray:
        """RGB pixels as a player shows them, in the stream's one frame size (see the module docstring)."""
        turns = round((decoded.rotation or 0) / 90) % 4  # the display matrix turns counter-clockwise
        stored = (decoded.width, decoded.height)
        if self.frame_size is None:
            self.frame_size = _capped(stored if turns % 2 == 0 else stored[::-1], self._max_side)
        want = self.frame_size if turns % 2 == 0 else self.frame_size[::-1]
        if want != stored and not self._size_changed and _capped(stored, self._max_side) != want:
            self._size_changed = True
            logger.warning("%s: frames change to %dx%d at frame %d; they are scaled to the stream's size %dx%d "
                           "so its tracks go on", self.shown, *stored, self.frames_decoded - 1, *want)
        image = decoded.to_ndarray(format="rgb24", width=want[0], height=want[1])
        return np.ascontiguousarray(np.rot90(image, turns)) if turns else image

    def _pts_seconds(self, decoded: av.VideoFrame) -> float:
        time_base = self._stream.time_base
        if decoded.pts is None or time_base is None:
            # No timestamp: continue from the previous frame at the nominal rate.
            step = 1.0 / (self.info.average_fps or 30.0)
            return 0.0 if self._last_pts_s is None else self._last_pts_s + step
        if self._origin_pts is None:
            start = self._stream.start_time
            self._origin_pts = start if start is not None else decoded.pts
        return float((decoded.pts - self._origin_pts) * time_base)

    def _decode(self) -> Iterator[av.VideoFrame]:
        stream = self._stream
        consecutive = 0
        failure: Exception | None = None
        flushed = False
        try:
            for packet in self._container.demux(stream):
                flushed = packet.size == 0
                try:
                    frames = stream.decode(None if flushed else packet)
                except av.error.EOFError:
                    break
                except av.error.FFmpegError as exc:
                    self.decode_errors += 1
                    consecutive += 1
                    # One warning per file; a damaged stream would otherwise flood the log.
                    log = logger.warning if self.decode_errors == 1 else logger.debug
                    log("%s: skipping undecodable packet at pts %s (%s)", self.shown, packet.pts, redact_text(str(exc), self.source))
                    if consecutive > self._max_consecutive_errors:
                        failure = exc
                        break
                    continue
                consecutive = 0
                yield from frames
        except (av.error.FFmpegError, OSError) as exc:
            failure = exc
        if not flushed:
            # Frames still inside the decoder (reordering, frame threads) are still good.
            with contextlib.suppress(av.error.FFmpegError):
                yield from stream.decode(None)
        if failure is None:
            return
        self.truncated = True
        if self.frames_decoded == 0:
            raise self._error(
                f"{self.shown} contains no decodable video frames ({failure}); the video data is corrupt.",
                "no_frames",
            ) from failure
        raise self._error(
            f"Decoding {self.shown} failed after {self.frames_decoded} frames ({failure}); the file is corrupt or "
            "truncated, and the frames before the failure were delivered.",
            "corrupt",
        ) from failure

    def _check_complete(self) -> None:
        if self.frames_decoded == 0:
            raise self._error(
                f"{self.shown} contains no decodable video frames; the file is empty or its video data is corrupt.",
                "no_frames",
            )
        info = self.info
        declared = info.frame_count
        if declared is not None and self.frames_decoded < declared - max(2, declared // 100):
            self.truncated = True
        duration = self._declared_duration_s()
        if duration is not None and self._last_pts_s is not None:
            frame_s = 1.0 / info.average_fps if info.average_fps else 0.0
            if self._last_pts_s + frame_s < duration - max(2 * frame_s, 0.02 * duration):
                self.truncated = True
        if self.decode_errors:
            logger.warning("%s: skipped %d undecodable packets", self.shown, self.decode_errors)
        if self.truncated:
            logger.warning(
                "%s ended early: decoded %d frames up to %.3f s, the header declares %s frames and %s s; "
                "the file is probably truncated.",
                self.shown,
                self.frames_decoded,
                self._last_pts_s or 0.0,
                declared,
                f"{duration:.3f}" if duration is not None else None,
            )

    def _declared_duration_s(self) -> float | None:
        stream = self._stream
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        # The container's duration covers every stream; it only speaks for the video when alone.
        if len(self._container.streams) == 1 and self._container.duration is not None:
            return self._container.duration / av.time_base
        return None
