"""LiveSource against a real RTSP server (GStreamer, in a child process) and FrameWindow semantics.

The RTSP server needs Debian's GStreamer RTSP server for /usr/bin/python3; when it is missing
these tests fail with the apt-get line to run (see tests/rtsp_server.py).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import socket
import sys
import threading
import time

import av
import numpy as np
import pytest

from operators.live_source import FrameWindow, LiveSource
from operators.synthetic import synthetic_frame, write_synthetic_video
from operators.video_source import VideoSourceError
from tests.rtsp_server import free_port, rtsp_server

SIZE = (160, 120)
FPS = 10.0
FRAMES = 30  # 3 s per round of the server's loop
HANG_GUARD_S = 60.0  # only ends a test that hangs; no test expects to wait anywhere near this long


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    return {
        "mp4": write_synthetic_video(root / "clip.mp4", FRAMES, SIZE, FPS),  # H.264 with B-frames
        "mkv": write_synthetic_video(root / "clip.mkv", FRAMES, SIZE, FPS, codec="mpeg4"),
    }


def _best_match(image: np.ndarray) -> tuple[int, float]:
    """The synthetic frame index an image shows, and the mean colour error to it."""
    errors = [np.abs(image.astype(np.int16) - synthetic_frame(i, SIZE, FPS)).mean() for i in range(FRAMES)]
    best = int(np.argmin(errors))
    return best, float(errors[best])


def _take(source: LiveSource, n: int) -> list:
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == n:
            source.stop()
    return frames


def _finish(target, timeout_s: float = HANG_GUARD_S) -> dict:
    """Run ``target()`` on a thread until it returns: {"value": ...} or {"error": ...}."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"{target} still running after {timeout_s} s"
    return outcome


class _LogEvent(logging.Handler):
    """Sets ``seen`` when a record of ``logger`` starts with ``prefix``; keeps those records."""

    def __init__(self, logger: str, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger, self.prefix = logging.getLogger(logger), prefix
        self.seen = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.records.append(record)
            self.seen.set()

    def __enter__(self) -> _LogEvent:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


def _assert_continuous(frames) -> None:
    assert [f.index for f in frames] == list(range(len(frames)))
    pts = [f.pts_s for f in frames]
    assert np.all(np.diff(pts) > 0), pts


@pytest.mark.parametrize(("container", "transport"), [("mp4", "tcp"), ("mkv", "udp")])
def test_frames_arrive_from_rtsp(videos, container, transport):
    with rtsp_server(videos[container]) as server:
        source = LiveSource(server.url, transport=transport, open_timeout_s=5)
        frames = _take(source, 12)
    assert len(frames) == 12 and source.reconnects == 0
    _assert_continuous(frames)
    assert frames[0].image.shape == (SIZE[1], SIZE[0], 3)
    # Real pictures in the right order: frame k shows synthetic frame k (a lossy codec: small error).
    shown = [_best_match(f.image) for f in frames[1:]]
    assert all(err < 6.0 for _, err in shown), shown
    indices = [i for i, _ in shown]
    assert indices == sorted(indices) and indices[-1] - indices[0] >= 8
    assert frames[-1].pts_s - frames[1].pts_s == pytest.approx((len(frames) - 2) / FPS, abs=0.05)


def test_fps_sampling_on_live_stream(videos):
    with rtsp_server(videos["mp4"]) as server:
        frames = _take(LiveSource(server.url, fps=4.0), 5)
    _assert_continuous(frames)
    # 4 fps out of 10 fps: one frame per 0.25 s instant, so gaps of 0.2 or 0.3 s.
    pts = np.array([f.pts_s for f in frames])
    slots = np.floor((pts + 1e-3) * 4.0)
    assert np.all(np.diff(slots) == 1), pts
    assert np.all(np.diff(pts) <= 0.31), pts


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_reconnects_after_server_restart(videos, transport):
    calls, received, restarted = [], [], []  # received/restarted: when this test saw each frame / restarted

    def reconnected(*args) -> None:
        calls.append((*args, source.frames_emitted, time.monotonic()))

    def restart() -> None:
        restarted.append(time.monotonic())
        server.start()

    with rtsp_server(videos["mp4"]) as server:
        source = LiveSource(
            server.url, transport=transport, reconnect_initial_s=0.2, reconnect_max_s=0.5,
            open_timeout_s=2, read_timeout_s=1.0, on_reconnect=reconnected,
        )
        frames = []
        restarter = None
        for frame in source:
            frames.append(frame)
            received.append(time.monotonic())
            if len(frames) == 5:
                server.kill()  # a crash: no teardown, sockets just die
                restarter = threading.Timer(1.0, restart)  # down for a while: the source must notice
                restarter.start()
            if calls and len(frames) >= calls[0][3] + 6:
                source.stop()
        restarter.join()
    _assert_continuous(frames)
    assert len(calls) == 1 and source.reconnects == 1
    attempt, error, downtime_s, first_new, reported_at = calls[0]
    assert attempt >= 1 and isinstance(error, VideoSourceError)
    assert first_new >= 5
    # The downtime is the real gap: the last old frame arrived after this test took the one before
    # it and before this test took it; the first new one after the restart and before the callback.
    assert restarted[0] - received[first_new - 1] <= downtime_s <= reported_at - received[first_new - 2]
    assert len(frames) == first_new + 6  # frames delivered before the crash are kept, none invented
    # The outage is visible in the timestamps, and the new connection starts from the file's beginning.
    assert frames[first_new].pts_s - frames[first_new - 1].pts_s == pytest.approx(downtime_s, abs=1e-6)
    assert _best_match(frames[first_new].image)[0] <= 1
    assert frames[-1].pts_s - frames[first_new].pts_s == pytest.approx(0.5, abs=0.05)


def test_unreachable_url_gives_up_after_its_reconnect_budget():
    calls = []
    url = f"rtsp://127.0.0.1:{free_port()}/stream"  # nothing listens there
    source = LiveSource(url, reconnect_initial_s=0.05, reconnect_max_s=0.1, max_reconnects=3,
                        open_timeout_s=1, on_reconnect=lambda *a: calls.append(a))
    with _LogEvent("operators.live_source", "reconnecting to") as waits:
        outcome = _finish(lambda: list(source))
    error = outcome.get("error")
    assert isinstance(error, VideoSourceError), outcome
    assert "gave up after 3 failed reconnection attempts" in str(error)
    assert error.source == url and isinstance(error.__cause__, VideoSourceError)
    # exactly the budget: three waits, each within the capped backoff, then no more attempts
    assert [r.args[1] for r in waits.records] == [1, 2, 3]
    assert all(0.0 < r.args[2] <= 0.1 for r in waits.records), [r.args for r in waits.records]
    assert calls == [] and source.frames_emitted == 0


def test_silent_server_times_out():
    # Accepts TCP connections but never answers nor closes them: only the open timeout ends each attempt.
    requests: list[bytes] = []

    def serve(listener: socket.socket) -> None:
        listener.settimeout(HANG_GUARD_S)
        for _ in range(2):  # the first connection and the one reconnection allowed
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(HANG_GUARD_S)
                request = b""
                while chunk := connection.recv(4096):  # until the client hangs up
                    request += chunk
                requests.append(request)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/stream"
        server = threading.Thread(target=serve, args=(listener,), daemon=True)
        server.start()
        source = LiveSource(url, reconnect_initial_s=0.05, reconnect_max_s=0.05, max_reconnects=1, open_timeout_s=0.5)
        outcome = _finish(lambda: list(source))
        server.join(HANG_GUARD_S)
        assert not server.is_alive()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no third attempt
    assert isinstance(outcome.get("error"), VideoSourceError) and "gave up" in str(outcome["error"]), outcome
    # each attempt asked, got no answer, and hung up on its own
    assert len(requests) == 2 and all(r.startswith(b"OPTIONS rtsp://") for r in requests), requests


def test_stop_from_another_thread_ends_backoff_and_streaming(videos):
    # During a backoff wait of an hour: only stop() can end it before the hang guard does.
    source = LiveSource(f"rtsp://127.0.0.1:{free_port()}/x", reconnect_initial_s=3600.0, reconnect_max_s=3600.0)
    with _LogEvent("operators.live_source", "reconnecting to") as backoff:
        frames_out: list = []
        iteration = threading.Thread(target=lambda: frames_out.extend(source), daemon=True)
        iteration.start()
        assert backoff.seen.wait(HANG_GUARD_S), "the source never began its backoff"
        source.stop()
        iteration.join(HANG_GUARD_S)
    assert not iteration.is_alive() and frames_out == []
    assert backoff.records[0].args[2] >= 1800.0  # it really was waiting out a long backoff
    # While frames flow: the iteration ends after the frame in hand.
    with rtsp_server(videos["mp4"]) as server:
        source = LiveSource(server.url)
        frames, lock, flowing = [], threading.Lock(), threading.Event()

        def consume() -> None:
            for frame in source:
                with lock:
                    frames.append(frame)
                if len(frames) >= 2:
                    flowing.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        assert flowing.wait(HANG_GUARD_S)
        with lock:  # nothing is taken while stop() is called: what is seen now was before it
            source.stop()
            before_stop = len(frames)
        consumer.join(HANG_GUARD_S)
        assert not consumer.is_alive()
    assert before_stop >= 2 and before_stop <= len(frames) <= before_stop + 1
    _assert_continuous(frames)


@contextlib.contextmanager
def _http_server(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def hls_dir(tmp_path_factory):
    """A 3 s HLS rendition (three 1 s segments) as a finished playlist and as a live one."""
    root = tmp_path_factory.mktemp("hls")
    with av.open(str(root / "vod.m3u8"), "w", format="hls", options={"hls_time": "1", "hls_playlist_type": "vod"}) as out:
        stream = out.add_stream("libx264", rate=int(FPS), options={"g": str(int(FPS))})  # a keyframe per segment
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for i in range(FRAMES):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(synthetic_frame(i, SIZE, FPS), format="rgb24")))
        out.mux(stream.encode())
    playlist = (root / "vod.m3u8").read_text().splitlines()
    (root / "live.m3u8").write_text("\n".join(line for line in playlist if "ENDLIST" not in line and "PLAYLIST-TYPE" not in line))
    return root


def test_http_file_and_finished_hls_end_without_reconnecting(videos, hls_dir):
    # Both declare a duration: their end is the end, not a disconnect.
    with _http_server(videos["mp4"].parent) as base:
        mp4_source = LiveSource(f"{base}/clip.mp4", max_reconnects=0)
        mp4_frames = list(mp4_source)
    with _http_server(hls_dir) as base:
        hls_source = LiveSource(f"{base}/vod.m3u8", max_reconnects=0)
        hls_frames = list(hls_source)
    for source, frames in ((mp4_source, mp4_frames), (hls_source, hls_frames)):
        assert len(frames) == FRAMES and source.reconnects == 0
        _assert_continuous(frames)


def test_live_hls_that_stops_updating_is_reconnected(hls_dir):
    # A live playlist (no ENDLIST) that never grows: FFmpeg reloads it a few times, then reports
    # the end; the source reconnects and, here, replays the same segments with later timestamps.
    calls = []
    with _http_server(hls_dir) as base:
        source = LiveSource(f"{base}/live.m3u8", read_timeout_s=1.0, reconnect_initial_s=0.1,
                            on_reconnect=lambda *args: calls.append(args))
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == FRAMES + 5:
                source.stop()
    _assert_continuous(frames)
    # the downtime includes the backoff wait, which is at least half of reconnect_initial_s
    assert len(calls) == 1 and calls[0][0] == 1 and "ended" in str(calls[0][1]) and calls[0][2] >= 0.05
    assert frames[FRAMES].pts_s - frames[FRAMES - 1].pts_s == pytest.approx(calls[0][2], abs=1e-6)


def test_rejects_files_and_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="open_video"):
        LiveSource(str(tmp_path / "a.mp4"))
    with pytest.raises(ValueError, match="transport"):
        LiveSource("rtsp://h/s", transport="sctp")
    with pytest.raises(ValueError, match="reconnect_initial_s"):
        LiveSource("rtsp://h/s", reconnect_initial_s=2.0, reconnect_max_s=1.0)


# -- FrameWindow ------------------------------------------------------------------------------


def test_window_drop_oldest():
    window = FrameWindow(3, drop_oldest=True)
    for i in range(5):
        assert window.put(i)
    assert window.dropped == 2 and len(window) == 3
    assert [window.get(), window.get(), window.get()] == [2, 3, 4]
    with pytest.raises(TimeoutError):
        window.get(timeout=0.05)
    window.put(5)
    window.close()
    assert window.put(6) is False
    assert window.get() == 5 and window.get() is None  # drained, then end of input


def test_window_blocking_backpressure():
    window = FrameWindow(2, drop_oldest=False)
    assert window.put("a") and window.put("b")
    assert window.put("c", timeout=0.05) is False  # full: the producer waits, nothing is dropped
    put_c = []
    producer = threading.Thread(target=lambda: put_c.append(window.put("c")), daemon=True)
    producer.start()
    _wait_until_blocked(producer)
    assert put_c == [] and len(window) == 2
    assert window.get() == "a"  # room: the producer goes on
    producer.join(HANG_GUARD_S)
    assert put_c == [True] and len(window) == 2 and window.dropped == 0
    # close() releases a producer blocked on a full window.
    put_d = []
    producer = threading.Thread(target=lambda: put_d.append(window.put("d")), daemon=True)
    producer.start()
    _wait_until_blocked(producer)
    window.close()
    producer.join(HANG_GUARD_S)
    assert put_d == [False]
    assert [window.get(), window.get(), window.get()] == ["b", "c", None]


def _wait_until_blocked(thread: threading.Thread) -> None:
    """Wait until ``thread`` waits inside ``FrameWindow.put``; fail if it returns without waiting."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        frame, names = sys._current_frames().get(thread.ident), []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        if "wait" in names and "put" in names[names.index("wait"):]:
            return
        assert thread.is_alive(), "put returned without waiting for room"
        time.sleep(0.001)
    raise AssertionError(f"put did not block within {HANG_GUARD_S} s")
