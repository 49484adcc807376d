"""A live source that stalls mid-stream (connected, sending nothing) reconnects after its read timeout, and
a stop request ends it in every state: connecting to a peer that never answers, backing off, stalled."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from operators.live_source import LiveSource
from operators.synthetic import write_synthetic_video
from tests.background_job import wait_for

HANG_GUARD_S = 60.0  # only ends a wait that would hang; each source here ends within seconds


@pytest.fixture(scope="module")
def live_ts(tmp_path_factory) -> bytes:
    """An MPEG-TS stream of 4 s: over HTTP without a length it reads as a live stream (no duration)."""
    return write_synthetic_video(tmp_path_factory.mktemp("stall") / "live.ts", frames=40, fps=10).read_bytes()


@contextlib.contextmanager
def stalling_server(body: bytes | None, send_bytes: int = 0) -> Iterator[dict]:
    """An HTTP server on loopback whose every connection gets the first ``send_bytes`` of ``body`` and then
    nothing, held open until the server closes (``body=None``: not even a response: a peer that accepts the
    connection and never answers). Yields its ``url`` and ``connections`` (a count)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() wakes up to see the server closing
    state = {"url": f"http://127.0.0.1:{listener.getsockname()[1]}/live.ts", "connections": 0}
    closing = threading.Event()
    held: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.recv(65536)  # the request
            if body is not None:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + body[:send_bytes])
        closing.wait()

    def accept() -> None:
        while not closing.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            state["connections"] += 1
            held.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        closing.set()
        listener.close()
        for conn in held:
            conn.close()
        thread.join(HANG_GUARD_S)


def _iterate(source: LiveSource, frames: list, done: threading.Event) -> threading.Thread:
    def run() -> None:
        try:
            frames.extend(source)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            frames.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_stall_mid_stream_becomes_a_reconnect_after_the_read_timeout(live_ts):
    reconnects = []
    with stalling_server(live_ts, send_bytes=len(live_ts) // 2) as server:
        source = LiveSource(server["url"], open_timeout_s=1.0, read_timeout_s=1.0, reconnect_initial_s=0.1,
                            reconnect_max_s=0.2, on_reconnect=lambda *args: reconnects.append(args))
        frames, done = [], threading.Event()
        _iterate(source, frames, done)
        wait_for(lambda: reconnects, "a reconnect after the stall", guard_s=HANG_GUARD_S)
        source.stop()
        assert done.wait(HANG_GUARD_S), "the stalled source did not end after stop()"
    attempt, error, _downtime_s = reconnects[0]
    assert attempt == 1 and "failed after" in str(error)  # the read timeout ended the silent connection
    assert server["connections"] >= 2
    images = [f for f in frames if not isinstance(f, Exception)]
    assert images and len(images) == len(frames), frames  # frames of both connections, no error raised
    assert [f.index for f in images] == list(range(len(images)))
    assert all(b.pts_s > a.pts_s for a, b in zip(images, images[1:], strict=False))  # one clock over both


@pytest.mark.parametrize("state", ["connecting", "backing off", "stalled"])
def test_stop_ends_a_live_source_in_every_state(live_ts, state):
    stop = threading.Event()
    body, send = {"connecting": (None, 0), "backing off": (b"", 0), "stalled": (live_ts, len(live_ts) // 2)}[state]
    # long timeouts and backoff: only the stop request can end the iteration within the guard
    with stalling_server(body, send) as server:
        source = LiveSource(server["url"], open_timeout_s=3.0, read_timeout_s=3.0, reconnect_initial_s=30.0,
                            reconnect_max_s=30.0, should_stop=stop.is_set)
        frames, done = [], threading.Event()
        _iterate(source, frames, done)
        wait_for(lambda: server["connections"] >= 1, "a connection", guard_s=HANG_GUARD_S)
        if state == "stalled":
            wait_for(lambda: frames, "frames before the stall", guard_s=HANG_GUARD_S)
        if state == "backing off":  # the empty response fails the open at once; then a 15-30 s backoff
            wait_for(lambda: source.last_error is not None, "a failed open", guard_s=HANG_GUARD_S)
        stop.set()  # what the stream actor's stop() sets; the source is asked, not told
        assert done.wait(HANG_GUARD_S), f"a source {state} did not end after the stop request"
    assert not any(isinstance(f, Exception) for f in frames), frames
    assert server["connections"] == 1  # it stopped instead of trying again
