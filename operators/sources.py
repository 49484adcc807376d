"""One stream's frames from any supported source: a file, a directory or glob of files, or a live URL.

Files of a directory or glob play in name order as one stream: frame indices and presentation
times continue across files (each file's pts is offset by the end of the previous one), so a
stream's records never go back in time. ``loop=True`` replays the files forever (demos, soak
tests). Frames of all files come in the size of the first (see :mod:`operators.video_source`).
Live URLs go to :class:`~operators.live_source.LiveSource`, which reconnects; a finished HLS
playlist (``#EXT-X-ENDLIST``: a recording, not a camera) is retried only a few times, since no
wait brings back segments its server has lost, and the error says which segment failed how.

A source URL may hold secrets: only the connection uses it as written; see
:mod:`operators.redaction` for how it is shown.
"""

from __future__ import annotations

import base64
import glob
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from operators.redaction import redact_text, redact_url
from operators.video_source import Frame, VideoSourceError, open_video

logger = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".m4v", ".mpg", ".mpeg", ".flv")
SourceKind = Literal["file", "glob", "directory", "rtsp", "http", "hls"]
LIVE_KINDS: tuple[SourceKind, ...] = ("rtsp", "http", "hls")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
FINISHED_PLAYLIST_RECONNECTS = 3  # a recording's segments that fail now will fail again
_PLAYLIST_TIMEOUT_S = 5.0


def url_scheme(source: str) -> str | None:
    """The lower-cased scheme of a ``scheme://...`` source; None for a path or glob."""
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else None


def source_kind(source: str) -> SourceKind:
    """What a source names. The one place that tells live sources (URLs, read as they are
    produced: reconnects, dropped frames) from files (read at their own pace, never dropping)."""
    scheme = url_scheme(source)
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "hls" if urlsplit(source).path.lower().endswith(".m3u8") else "http"
    if any(ch in source for ch in "*?["):
        return "glob"
    return "directory" if source.endswith("/") or os.path.isdir(source) else "file"


def is_live(source: str) -> bool:
    """Whether ``source`` is a live URL rather than a file, directory or glob."""
    return source_kind(source) in LIVE_KINDS


def expand_files(source: str) -> list[Path]:
    """The files a file, directory or glob source names, in order; an empty match is an error."""
    path = Path(source)
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    else:
        files = [path]
    if not files:
        raise VideoSourceError(f"{source}: matches no video file; check the path or pattern",
                               reason="missing", source=source)
    return files


def stream_frames(
    source: str,
    fps: float | None = None,
    *,
    loop: bool = False,
    on_reconnect: Callable[[int, Exception, float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[Frame]:
    """Frames of the stream with continuous ``index`` and ``pts_s``; decode errors raise
    ``VideoSourceError`` after every frame before them was yielded."""
    if is_live(source):
        from operators.live_source import LiveSource

        finished = source_kind(source) == "hls" and _finished_playlist(source) is not None
        live = LiveSource(source, fps=fps, on_reconnect=on_reconnect, should_stop=should_stop,
                          max_reconnects=FINISHED_PLAYLIST_RECONNECTS if finished else None)
        try:
            for frame in live:
                if should_stop():
                    return
                yield frame
        except VideoSourceError as e:
            raise _explained(e, source) if finished and live.frames_emitted == 0 else e from None
        finally:
            live.stop()
        return

    index, offset = 0, 0.0
    size = None  # the first file's frame size: every later file's frames are scaled to it
    while True:
        for path in expand_files(source):
            last_pts, step = None, 0.0
            with open_video(path, fps=fps, frame_size=size) as video:
                if video.info.average_fps:
                    step = 1.0 / (fps or video.info.average_fps)
                for frame in video:
                    if should_stop():
                        return
                    last_pts = offset + frame.pts_s
                    yield replace(frame, index=index, pts_s=last_pts)
                    index += 1
                size = video.frame_size
                if video.truncated:
                    raise VideoSourceError(f"{path} ends before the length its header declares: the file is "
                                           "truncated; the frames before its end were processed",
                                           reason="corrupt", source=str(path))
            if last_pts is not None:
                offset = last_pts + (step or 0.04)
        if not loop:
            return


def _fetch(url: str, method: str = "GET") -> tuple[int, str]:
    """HTTP status and text of ``url``; user info in the URL becomes basic authentication."""
    parts = urlsplit(url)
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request = urllib.request.Request(urlunsplit(parts), headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=_PLAYLIST_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            return response.status, response.read(1 << 20).decode("utf-8", "replace") if method == "GET" else ""
    except urllib.error.HTTPError as e:
        return e.code, ""


def _finished_playlist(url: str) -> list[str] | None:
    """The segment URIs of a finished HLS playlist (``#EXT-X-ENDLIST``); None for a live one, a
    master playlist, or one that cannot be read now (the source's own retries deal with that)."""
    try:
        status, text = _fetch(url)
    except (OSError, ValueError):
        return None
    if status != 200 or "#EXT-X-ENDLIST" not in text:
        return None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _explained(error: VideoSourceError, url: str) -> VideoSourceError:
    """The error of a finished playlist that gave no frame, naming the first segment that fails."""
    shown = redact_url(url)
    for segment in _finished_playlist(url) or []:
        try:
            status, _ = _fetch(urljoin(url, segment), "HEAD")
        except (OSError, ValueError) as e:
            status, why = None, f"cannot be fetched ({redact_text(str(e), url)})"
        else:
            why = f"answers HTTP {status}"
        if status != 200:
            name = urlsplit(segment).path.rsplit("/", 1)[-1]
            return VideoSourceError(f"{shown}: the HLS playlist is finished but its segment {name} {why}; the "
                                    "recording's segments are missing on the server: check the playlist and its "
                                    "segments", reason="missing", source=shown)
    return error
