"""Live video sources (RTSP, HTTP(S), HLS) that survive disconnects, and the in-flight frame window.

:class:`LiveSource` wraps :func:`operators.video_source.open_video`: when a connection fails
(cannot open, read error, read timeout, or a live stream that simply ends) it reconnects with
capped exponential backoff and jitter, and keeps frame numbering and timestamps going:

* ``Frame.index`` counts emitted frames over the whole life of the source, ``Frame.source_index``
  counts decoded frames over all connections.
* ``Frame.pts_s`` never decreases. Each connection restarts its clock at 0, so its timestamps are
  shifted: the first frame of a new connection is placed after the last frame of the previous
  one by the wall-clock time that passed between receiving them (so gaps in ``pts_s`` are real
  outage time). A timestamp that jumps backwards inside a connection is re-based the same way,
  one nominal frame interval after the previous frame.
* ``fps`` sampling runs on these continuous timestamps; the first frame of every new connection
  is always kept, so each reconnect is followed by an emitted frame.

End of stream: a stream that declares no duration (a camera, a live HLS playlist) is live, and
its end is a disconnect; one with a duration (an MP4 over HTTP, a finished HLS playlist) ends the
iteration normally. ``reconnect_on_eof`` forces either behaviour.

:class:`FrameWindow` is the bounded buffer between a reader thread and the engine: live sources
drop their oldest frame when it is full (stale frames are worthless), files block the reader.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from operators.redaction import redact_text, redact_url
from operators.video_source import FpsSampler, Frame, VideoSource, VideoSourceError, open_video

logger = logging.getLogger(__name__)

# Reasons that no number of retries can fix: the stream is there but is not usable video.
_PERMANENT_REASONS = frozenset({"not_video", "unsupported_codec"})
_MIN_GAP_S = 1e-3
_STOP_POLL_S = 0.1  # how often a backoff wait asks should_stop()
# FFmpeg reads 20 frames at open to estimate the frame rate: 2 s of latency on a 10 fps RTSP
# H.264 stream, all delivered in one burst (measured: open 2.4 s -> 0.4 s without it).
_LIVE_OPTIONS = {"fpsprobesize": "0"}

ReconnectCallback = Callable[[int, BaseException, float], None]


class LiveSource:
    """Iterate frames of a live stream URL, reconnecting on failure; see the module docstring.

    ``transport`` is RTSP's lower transport ("tcp", "udp" or None for FFmpeg's choice) and is
    ignored for other protocols; ``options`` are extra FFmpeg options (they override ours). ``open_timeout_s`` bounds connecting, ``read_timeout_s``
    (default: the same) bounds waiting for data; a stalled stream counts as a disconnect.

    After a failure the source makes at most ``max_reconnects`` reconnection attempts in a row
    (None: unlimited), waiting ``min(reconnect_max_s, reconnect_initial_s * 2**(k-1))`` times a
    random factor in [0.5, 1] before attempt k; when all fail it raises :class:`VideoSourceError`.
    The first connection is treated the same way (it is retried too). A connection that opens
    but yields no frame counts as a failed attempt. Streams that are not decodable video
    ("not_video", "unsupported_codec") raise at once.

    ``on_reconnect(attempt, error, downtime_s)`` is called, on the iterating thread, when a new
    connection delivers its first frame after one or more failures: ``attempt`` is the number of
    the attempt that succeeded (1 = the first retry), ``error`` the failure that started the
    outage, ``downtime_s`` the wall time since the last frame received (or since iteration
    started). At that moment ``frames_emitted`` is the index the next yielded frame will have.

    :meth:`stop` may be called from any thread: iteration ends after the current frame, or at
    once during a backoff wait; a blocked open or read returns within its timeout. ``should_stop``,
    when given, is asked during backoff waits too, so a source that never connects still ends.

    Only the connection uses ``url`` as written: what this class logs, raises or hands to
    ``on_reconnect`` shows :attr:`shown_url` and has the URL's secrets masked.
    """

    def __init__(
        self,
        url: str,
        fps: float | None = None,
        *,
        transport: str | None = "tcp",
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        max_reconnects: int | None = None,
        open_timeout_s: float = 5.0,
        read_timeout_s: float | None = None,
        on_reconnect: ReconnectCallback | None = None,
        reconnect_on_eof: bool | None = None,
        options: Mapping[str, str] | None = None,
        thread_type: str = "AUTO",
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if "://" not in url or url.startswith("file:"):
            raise ValueError(f"LiveSource needs a stream URL (rtsp://, http(s)://, ...), got {url!r}; use open_video for files")
        if transport not in ("tcp", "udp", None):
            raise ValueError(f"transport must be 'tcp', 'udp' or None, got {transport!r}")
        if not (0 < reconnect_initial_s <= reconnect_max_s):
            raise ValueError(
                f"need 0 < reconnect_initial_s <= reconnect_max_s, got {reconnect_initial_s} and {reconnect_max_s}"
            )
        if max_reconnects is not None and max_reconnects < 0:
            raise ValueError(f"max_reconnects must be >= 0 or None, got {max_reconnects}")
        if open_timeout_s <= 0 or (read_timeout_s is not None and read_timeout_s <= 0):
            raise ValueError("open_timeout_s and read_timeout_s must be positive")
        self.url = url
        self.shown_url = redact_url(url)
        self.fps = fps
        FpsSampler(fps)  # validates fps now rather than at the first frame
        self._transport = transport
        self._initial_s = reconnect_initial_s
        self._max_s = reconnect_max_s
        self._max_reconnects = max_reconnects
        self._timeout = (open_timeout_s, read_timeout_s or open_timeout_s)
        self._on_reconnect = on_reconnect
        self._reconnect_on_eof = reconnect_on_eof
        self._options = dict(options or {})
        self._thread_type = thread_type
        self._stop = threading.Event()
        self._should_stop = should_stop
        self._rng = random.Random()
        self._started = False
        self.frames_emitted = 0
        self.frames_decoded = 0
        self.reconnects = 0  # successful reconnections
        self.last_error: BaseException | None = None

    def stop(self) -> None:
        """Ask the iteration to end; safe to call from any thread, any number of times."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError("A LiveSource can be iterated only once; create a new one to read again.")
        self._started = True
        return self._frames()

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> VideoSource:
        options = {**_LIVE_OPTIONS, **self._options}
        if self._transport is not None and self.url.lower().startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", self._transport)
        # Sampling happens here, on the continuous clock, so the connection keeps every frame.
        return open_video(self.url, None, thread_type=self._thread_type, options=options, timeout_s=self._timeout)

    def _backoff_s(self, attempt: int) -> float:
        delay = min(self._max_s, self._initial_s * 2.0 ** (attempt - 1))
        return delay * self._rng.uniform(0.5, 1.0)

    def _after_failure(self, failures: int, error: BaseException, since: float) -> None:
        """Raise when the retry budget is spent, otherwise sleep before the next attempt."""
        self.last_error = error
        if isinstance(error, VideoSourceError) and error.reason in _PERMANENT_REASONS:
            raise self._redacted(error) from None
        attempts = failures - 1  # reconnection attempts made so far for this outage
        if self._max_reconnects is not None and attempts >= self._max_reconnects:
            reason = error.reason if isinstance(error, VideoSourceError) else "open_failed"
            raise VideoSourceError(
                f"{self.shown_url}: gave up after {attempts} failed reconnection attempts over "
                f"{time.monotonic() - since:.1f} s (last error: {redact_text(str(error), self.url)}); check that the "
                "stream is reachable, or allow more attempts with max_reconnects.",
                reason=reason,
                source=self.shown_url,
            ) from self._redacted(error)
        delay = self._backoff_s(failures)
        logger.warning("reconnecting to %s, attempt %d in %.2f s, after: %s", self.shown_url, failures, delay,
                       redact_text(str(error), self.url))
        self._wait(delay)

    def _wait(self, delay_s: float) -> None:
        """Sleep through a backoff; ``stop()`` or ``should_stop()`` ends it early. A source that never
        connects yields no frame at which its reader could ask it to stop, so it asks here."""
        deadline = time.monotonic() + delay_s
        while not self._stop.wait(min(_STOP_POLL_S, max(0.0, deadline - time.monotonic()))):
            if self._should_stop is not None and self._should_stop():
                self._stop.set()
            elif time.monotonic() >= deadline:
                return

    def _redacted(self, error: BaseException) -> VideoSourceError:
        """``error`` as a ``VideoSourceError`` whose text no longer holds this URL's secrets (FFmpeg's
        messages quote the URL); it carries no traceback, whose frames could hold the URL."""
        reason = error.reason if isinstance(error, VideoSourceError) else "open_failed"
        return VideoSourceError(redact_text(str(error), self.url), reason=reason, source=self.shown_url)

    def _is_live(self, source: VideoSource) -> bool:
        if self._reconnect_on_eof is not None:
            return self._reconnect_on_eof
        return source.info.duration_s is None

    # -- iteration ---------------------------------------------------------------------------

    def _frames(self) -> Iterator[Frame]:
        failures = 0  # consecutive failures: the one that began the outage plus failed attempts
        outage_error: BaseException | None = None
        last_frame_wall = outage_start = time.monotonic()
        last_pts: float | None = None
        offset = 0.0
        sampler = FpsSampler(self.fps)
        while not self._stop.is_set():
            try:
                source = self._open()
            except VideoSourceError as exc:
                failures += 1
                outage_error = outage_error or exc
                self._after_failure(failures, exc, outage_start)
                continue
            if self._stop.is_set():
                source.close()
                return
            got_frame = False
            error: BaseException | None = None
            try:
                step = 1.0 / (source.info.average_fps or 30.0)
                for local in source:
                    now = time.monotonic()
                    if not got_frame:
                        got_frame = True
                        if last_pts is not None:
                            # New connection, new clock: continue after the last frame by the real gap.
                            offset = last_pts + max(now - last_frame_wall, _MIN_GAP_S) - local.pts_s
                        if failures:
                            sampler = FpsSampler(self.fps)
                            self.reconnects += 1
                            logger.info("%s: reconnected after %d attempt(s), %.2f s down", self.shown_url, failures, now - last_frame_wall)
                            if self._on_reconnect is not None:
                                self._on_reconnect(failures, self._redacted(outage_error), now - last_frame_wall)
                        failures, outage_error = 0, None
                    pts = local.pts_s + offset
                    if last_pts is not None and pts <= last_pts:
                        offset = last_pts + step - local.pts_s
                        pts = last_pts + step
                    last_pts, last_frame_wall = pts, now
                    self.frames_decoded += 1
                    if not sampler.accept(pts):
                        continue
                    frame = Frame(index=self.frames_emitted, source_index=self.frames_decoded - 1, pts_s=pts, image=local.image)
                    self.frames_emitted += 1
                    yield frame
                    if self._stop.is_set():
                        return
                if not self._is_live(source):
                    return
                error = VideoSourceError(
                    f"{self.shown_url}: the live stream ended", reason="corrupt" if got_frame else "no_frames",
                    source=self.shown_url,
                )
            except VideoSourceError as exc:
                error = exc
            finally:
                source.close()
            if self._stop.is_set():
                return
            if got_frame:
                outage_start = time.monotonic()
            failures += 1
            outage_error = outage_error or error
            self._after_failure(failures, error, outage_start)


T = TypeVar("T")


class FrameWindow(Generic[T]):
    """A bounded, thread-safe FIFO between one producer (reader) and consumers (the engine feed).

    ``drop_oldest=True`` (live sources): ``put`` never blocks; when full, the oldest item is
    discarded and counted in ``dropped``. ``drop_oldest=False`` (files): ``put`` waits for room,
    so the reader is held back to the engine's pace and nothing is lost.
    ``close()`` ends the input: consumers drain what is left and then get ``None``; a blocked
    ``put`` returns ``False`` at once, which tells the producer to stop.
    """

    def __init__(self, capacity: int, *, drop_oldest: bool) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self._items: deque[T] = deque()
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add ``item``; ``False`` when the window is closed or (blocking mode) ``timeout`` passed."""
        with self._cond:
            if self.drop_oldest:
                if self._closed:
                    return False
                if len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            elif not self._cond.wait_for(lambda: self._closed or len(self._items) < self.capacity, timeout):
                return False
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; ``None`` once closed and empty; raises ``TimeoutError`` after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError(f"no frame arrived within {timeout} s")
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
