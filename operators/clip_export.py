"""Cut a clip out of an archive video: packets copied as they are, no re-encoding.

A clip starts at the video keyframe at or before the requested start (a copied clip can only
begin where a decoder can) and takes every video packet up to the requested end (by decode
time, so the B-frames a kept frame depends on are kept too); audio, if present, is copied over
the same span. Timestamps are rebased so the clip starts at 0. Where the output container
cannot take the source's codec, the video alone is re-encoded (libx264, else mpeg4) over the
same span, and a debug line says so.

The source is a local path or an object-store URI, read through :mod:`operators.storage`; the
clip is written under a hidden temporary name next to ``out_path`` and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from operators.storage import resolve
from operators.video_writer import VideoWriter, VideoWriterError

logger = logging.getLogger(__name__)

REENCODE_CODECS = ("libx264", "mpeg4")
_EPS_S = 1e-3  # timestamps from the index are rounded floats; this much slack keeps the frame at the boundary


class ClipExportError(ValueError):
    """A clip cannot be cut; the message names the source and says what to check."""


@dataclass(frozen=True)
class ExportedClip:
    path: Path
    source_start_s: float  # where the clip starts in the source: the keyframe at or before the requested start
    source_end_s: float  # the last video frame taken, in the source's time
    video_packets: int  # copied, or frames encoded where re-encoded
    copied: bool  # True: packets copied as they are; False: the video was re-encoded


def export_clip(source_uri: str, start_s: float, end_s: float, out_path: str | os.PathLike[str]) -> ExportedClip:
    """Write ``source_uri`` from ``start_s`` to ``end_s`` (seconds, source time) to ``out_path``."""
    if not end_s >= start_s:
        raise ClipExportError(f"{source_uri}: clip end {end_s}s is before its start {start_s}s")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")  # keeps the extension: it picks the muxer
    try:
        with resolve(source_uri).open_input() as raw, _open_source(raw, source_uri) as source:
            try:
                clip = _copy(source, max(start_s, 0.0), end_s, partial)
            except ClipExportError:
                raise
            except (ValueError, av.error.FFmpegError) as e:
                logger.debug("%s: %s cannot take the packets as they are (%s); re-encoding the video (audio "
                             "is left out)", source_uri, out.suffix or "the output", e)
                partial.unlink(missing_ok=True)
                clip = _reencode(source, max(start_s, 0.0), end_s, partial, source_uri)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportedClip(out, clip.source_start_s, clip.source_end_s, clip.video_packets, clip.copied)


def _open_source(raw, uri: str) -> av.container.InputContainer:
    try:
        return av.open(raw, mode="r")
    except (av.error.FFmpegError, ValueError) as e:
        raise ClipExportError(f"{uri}: not a video PyAV can read ({e}); check that the file is complete") from e


def _seconds(ticks: int, time_base: Fraction) -> float:
    return float(ticks * time_base)


def _keyframe_at_or_before(source, video, start_s: float) -> float:
    """The time of the last video keyframe at or before ``start_s``."""
    for seek_s in (start_s, 0.0):  # from 0 where the demuxer's seek overshot (a container without a usable index)
        source.seek(int(seek_s / video.time_base), stream=video, backward=True, any_frame=False)
        found = None
        for packet in source.demux(video):
            if packet.pts is None:
                continue
            # once decode time passes the start no later keyframe can be at or before it (pts >= dts)
            if _seconds(packet.dts if packet.dts is not None else packet.pts, video.time_base) > start_s + _EPS_S:
                break
            t = _seconds(packet.pts, video.time_base)
            if packet.is_keyframe and t <= start_s + _EPS_S:
                found = t
        if found is not None:
            return found
    raise ClipExportError(f"no video keyframe at or before {start_s:.3f}s")


def _packets(source, video, audio, start_s: float, end_s: float) -> Iterator[av.Packet]:
    """The packets of the clip in demux order: video from the keyframe at or before ``start_s`` while its decode
    time is at most ``end_s``; audio whose time falls in the same span."""
    first_s = _keyframe_at_or_before(source, video, start_s)
    source.seek(int(first_s / video.time_base), stream=video, backward=True, any_frame=False)
    started = video_done = False
    audio_done = audio is None
    early_audio: list[av.Packet] = []  # audio demuxed before the first keyframe but timed after it
    for packet in source.demux([s for s in (video, audio) if s is not None]):
        if packet.dts is None and packet.pts is None or packet.size == 0:
            continue
        stamp = packet.pts if packet.pts is not None else packet.dts
        t = _seconds(stamp, packet.time_base)
        if packet.stream is video:
            if not started:
                if not packet.is_keyframe or t < first_s - _EPS_S:
                    continue
                started, first_s = True, t
                yield packet
                yield from (p for p in early_audio if _seconds(p.pts or 0, p.time_base) >= first_s - _EPS_S)
                early_audio.clear()
                continue
            decode_s = _seconds(packet.dts if packet.dts is not None else stamp, packet.time_base)
            if decode_s > end_s + _EPS_S:
                video_done = True
            elif not video_done:
                yield packet
        elif not started:
            early_audio.append(packet)
        elif t > end_s + _EPS_S:
            audio_done = True
        elif t >= first_s - _EPS_S and not audio_done:
            yield packet
        if video_done and audio_done:
            return


@dataclass(frozen=True)
class _Span:
    source_start_s: float
    source_end_s: float
    video_packets: int
    copied: bool


def _copy(source, start_s: float, end_s: float, partial: Path) -> _Span:
    video = _video_stream(source)
    audio = source.streams.audio[0] if source.streams.audio else None
    with av.open(str(partial), mode="w") as out:
        targets = {video: out.add_stream_from_template(video)}
        if audio is not None:
            targets[audio] = out.add_stream_from_template(audio)
        offsets: dict[object, int] = {}
        first_s, last_s, count = None, start_s, 0
        for packet in _packets(source, video, audio, start_s, end_s):
            if first_s is None:  # the first packet is the keyframe: every stream is rebased to its time
                first_s = _seconds(packet.pts, packet.time_base)
                offsets = {s: round(first_s / s.time_base) for s in targets}
            offset = offsets[packet.stream]
            if packet.stream is video:
                count += 1
                last_s = max(last_s, _seconds(packet.pts if packet.pts is not None else packet.dts, video.time_base))
            if packet.pts is not None:
                packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            packet.stream = targets[packet.stream]
            out.mux(packet)
        if first_s is None:
            raise ClipExportError(f"no video between {start_s:.3f}s and {end_s:.3f}s")
    return _Span(first_s, last_s, count, True)


def _reencode(source, start_s: float, end_s: float, partial: Path, uri: str) -> _Span:
    video = _video_stream(source)
    rate = video.average_rate or video.guessed_rate or Fraction(25)
    packets = list(_packets(source, video, None, start_s, end_s))
    if not packets:
        raise ClipExportError(f"{uri}: no video between {start_s:.3f}s and {end_s:.3f}s")
    first_s = _seconds(packets[0].pts, video.time_base)
    last_s, count, writer = first_s, 0, None
    try:
        for packet in [*packets, None]:
            frames = packet.decode() if packet is not None else video.codec_context.decode(None)
            for frame in frames:
                if frame.pts is None:
                    continue
                t = _seconds(frame.pts, frame.time_base)
                if not first_s - _EPS_S <= t <= end_s + _EPS_S:
                    continue
                if writer is None:
                    writer = VideoWriter(partial, rate, (frame.width, frame.height), codecs=REENCODE_CODECS)
                writer.write(frame.to_ndarray(format="rgb24"), pts_s=t - first_s)
                last_s, count = max(last_s, t), count + 1
        if writer is not None:
            writer.close()
    except VideoWriterError as e:
        raise ClipExportError(f"{uri}: cannot re-encode the clip ({e})") from e
    if writer is None:
        raise ClipExportError(f"{uri}: no video frame between {start_s:.3f}s and {end_s:.3f}s")
    return _Span(first_s, last_s, count, False)


def _video_stream(source):
    if not source.streams.video:
        raise ClipExportError(f"{source.name}: has no video stream")
    return source.streams.video[0]
