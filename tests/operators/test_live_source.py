"""LiveSource against a real RTSP server (GStreamer, in a child process) and FrameWindow semantics.

The RTSP server needs Debian's GStreamer RTSP server for /usr/bin/python3; when it is missing
these tests fail with the apt-get line to run (see tests/rtsp_server.py).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
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
    calls = []
    with rtsp_server(videos["mp4"]) as server:
        source = LiveSource(
            server.url, transport=transport, reconnect_initial_s=0.2, reconnect_max_s=0.5,
            open_timeout_s=2, read_timeout_s=1.0, on_reconnect=lambda *args: calls.append((*args, source.frames_emitted)),
        )
        frames = []
        restarter = None
        for frame in source:
            frames.append(frame)
            if len(frames) == 5:
                server.kill()  # a crash: no teardown, sockets just die
                restarter = threading.Timer(1.0, server.start)
                restarter.start()
            if calls and len(frames) >= calls[0][3] + 6:
                source.stop()
        restarter.join()
    _assert_continuous(frames)
    assert len(calls) == 1 and source.reconnects == 1
    attempt, error, downtime_s, first_new = calls[0]
    assert attempt >= 1 and isinstance(error, VideoSourceError)
    assert 1.0 <= downtime_s < 15.0
    assert len(frames) == first_new + 6  # frames delivered before the crash are kept, none invented
    # The outage is visible in the timestamps, and the new connection starts from the file's beginning.
    assert frames[first_new].pts_s - frames[first_new - 1].pts_s == pytest.approx(downtime_s, abs=0.2)
    assert _best_match(frames[first_new].image)[0] <= 1
    assert frames[-1].pts_s - frames[first_new].pts_s == pytest.approx(0.5, abs=0.05)


def test_unreachable_url_gives_up_in_bounded_time():
    calls = []
    url = f"rtsp://127.0.0.1:{free_port()}/stream"  # nothing listens there
    source = LiveSource(url, reconnect_initial_s=0.05, reconnect_max_s=0.1, max_reconnects=3,
                        open_timeout_s=1, on_reconnect=lambda *a: calls.append(a))
    start = time.monotonic()
    with pytest.raises(VideoSourceError, match="gave up after 3 failed reconnection attempts") as info:
        list(source)
    assert time.monotonic() - start < 3.0
    assert info.value.source == url and isinstance(info.value.__cause__, VideoSourceError)
    assert calls == [] and source.frames_emitted == 0


def test_silent_server_times_out():
    # Accepts TCP connections but never answers: only the open timeout ends each attempt.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/stream"
        source = LiveSource(url, reconnect_initial_s=0.05, reconnect_max_s=0.05, max_reconnects=1, open_timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(VideoSourceError, match="gave up"):
            list(source)
        assert 0.9 < time.monotonic() - start < 4.0


def test_stop_from_another_thread_ends_backoff_and_streaming(videos):
    # During a long backoff wait.
    source = LiveSource(f"rtsp://127.0.0.1:{free_port()}/x", reconnect_initial_s=5.0, reconnect_max_s=5.0)
    threading.Timer(0.3, source.stop).start()
    start = time.monotonic()
    assert list(source) == []
    assert time.monotonic() - start < 2.0
    # While frames flow.
    with rtsp_server(videos["mp4"]) as server:
        source = LiveSource(server.url)
        frames, stop_at = [], None
        for frame in source:
            frames.append(frame)
            if len(frames) == 2:
                stop_at = time.monotonic()
                threading.Thread(target=source.stop).start()
        assert time.monotonic() - stop_at < 1.0 and len(frames) <= 4


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
    assert len(calls) == 1 and calls[0][0] == 1 and "ended" in str(calls[0][1]) and calls[0][2] > 0.05
    assert frames[FRAMES].pts_s - frames[FRAMES - 1].pts_s == pytest.approx(calls[0][2], abs=0.2)


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
    got = []

    def consume():
        time.sleep(0.2)
        got.append(window.get())

    threading.Thread(target=consume).start()
    start = time.monotonic()
    assert window.put("c")  # unblocked by the consumer
    assert time.monotonic() - start >= 0.15
    assert got == ["a"] and window.dropped == 0
    # close() releases a producer blocked on a full window.
    threading.Timer(0.1, window.close).start()
    assert window.put("d") is False
    assert [window.get(), window.get(), window.get()] == ["b", "c", None]
