"""A small RTSP server for tests: serves one video file at ``rtsp://127.0.0.1:PORT/stream`` in a loop.

Two halves in one file:

* ``python3 tests/rtsp_server.py VIDEO PORT`` (run by Debian's ``/usr/bin/python3``, where
  ``python3-gi`` lives; the project's virtualenv cannot import ``gi``) is the server. It uses
  GStreamer's RTSP server library through GObject introspection and needs only::

      apt-get install --no-install-recommends gir1.2-gst-rtsp-server-1.0 python3-gi

  (that pulls gstreamer1.0-plugins-base/-good/-bad, which the RTSP server library depends on).
  Nothing is decoded or re-encoded, so no codec plugin (libav, x264) is needed.
* :class:`RtspServerProcess` / :func:`rtsp_server` (imported by tests under the project's Python)
  start that process, wait until it listens, and kill or restart it.

How the loop works: the file's encoded frames are read once into memory (``parsebin`` finds the
demuxer, so MP4 and Matroska with H.264, H.265 or MPEG-4 part 2 all work); every client gets its
own pipeline ``appsrc ! rtp*pay`` that replays those frames forever, shifting the timestamps by
one file length per round so they keep increasing (a seek back to the start would reset them and
upset the client's jitter buffer). The first frame must be a keyframe, which every encoder writes.
Clients may use TCP (interleaved) or UDP transport.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MOUNT = "/stream"
SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_HINT = (
    "install GStreamer's RTSP server for Debian's python3: "
    "`apt-get install --no-install-recommends gir1.2-gst-rtsp-server-1.0 python3-gi`"
)
_READY = "READY"
_EXIT_MISSING_GSTREAMER = 3

# Encoded-stream caps name -> RTP payloader (all in gstreamer1.0-plugins-good). H.264/H.265
# parameter sets travel in the SDP only: repeated in-band before each keyframe, they made
# FFmpeg (8.0) output that keyframe twice with the same timestamp.
_PAYLOADERS = {
    "video/x-h264": "rtph264pay config-interval=0",
    "video/x-h265": "rtph265pay config-interval=0",
    "video/mpeg": "rtpmp4vpay config-interval=-1",
}


# -- the server (runs under /usr/bin/python3) --------------------------------------------------


def _load_encoded(Gst, path: str):
    """All encoded video buffers of ``path`` with their caps: (caps, [(pts, dts, dur, delta, data)], period_ns)."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! parsebin ! appsink name=sink sync=false emit-signals=false'
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    caps, frames = None, []
    try:
        while True:
            sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
            if sample is None:
                break
            caps = caps or sample.get_caps()
            buf = sample.get_buffer()
            pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else None
            dts = buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else pts
            if pts is None:
                raise SystemExit(f"{path}: a video frame has no timestamp; re-encode the file")
            duration = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0
            delta = bool(buf.get_flags() & Gst.BufferFlags.DELTA_UNIT)
            frames.append((pts, dts, duration, delta, buf.extract_dup(0, buf.get_size())))
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not frames:
        raise SystemExit(f"{path}: no video frames found; pass an MP4 or Matroska file with H.264/H.265/MPEG-4 video")
    base = min(min(f[0], f[1]) for f in frames)
    step = max(f[2] for f in frames) or Gst.SECOND // 30
    frames = [(p - base, d - base, dur or step, delta, data) for p, d, dur, delta, data in frames]
    # One round lasts from the first presentation time to the end of the last frame shown.
    period = max(p + dur for p, _, dur, _, _ in frames) - min(p for p, *_ in frames)
    return caps, frames, period


def serve(path: str, port: int) -> None:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        sys.stderr.write(f"GStreamer RTSP server unavailable ({exc}); {INSTALL_HINT}\n")
        sys.exit(_EXIT_MISSING_GSTREAMER)

    Gst.init(None)
    caps, frames, period = _load_encoded(Gst, path)
    kind = caps.get_structure(0).get_name()
    if kind not in _PAYLOADERS:
        raise SystemExit(f"{path}: cannot stream {kind} over RTP here; use H.264, H.265 or MPEG-4 video")

    def on_media_configure(_factory, media) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        appsrc.set_property("caps", caps)
        position = {"i": 0}  # per client: the next frame to send, counted over all rounds

        def on_need_data(src, _length) -> None:
            rnd, i = divmod(position["i"], len(frames))
            pts, dts, duration, delta, data = frames[i]
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts, buf.dts, buf.duration = pts + rnd * period, dts + rnd * period, duration
            if delta:
                buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
            position["i"] += 1
            src.emit("push-buffer", buf)

        appsrc.connect("need-data", on_need_data)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( appsrc name=src format=time is-live=false ! {_PAYLOADERS[kind]} name=pay0 pt=96 )")
    factory.set_shared(False)
    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}; pick another port")
    sys.stdout.write(f"{_READY} rtsp://127.0.0.1:{port}{MOUNT}\n")
    sys.stdout.flush()

    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    loop.run()


# -- the test helper (runs under the project's Python) ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServerProcess:
    """Runs :func:`serve` in a child process; ``start`` waits until it accepts connections.

    ``kill()`` ends it abruptly (SIGKILL, as a crash would) and ``start()`` brings it back on the
    same port, which is how tests cut a live stream.
    """

    def __init__(self, path: str | os.PathLike[str], port: int | None = None, ready_timeout_s: float = 20.0):
        self.path = str(path)
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}{MOUNT}"
        self._ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> RtspServerProcess:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("the RTSP server is already running; kill() or stop() it first")
        if not Path(SYSTEM_PYTHON).exists():
            raise RuntimeError(f"{SYSTEM_PYTHON} not found (the test RTSP server runs on Debian's Python); {INSTALL_HINT}")
        self._proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, self.path, str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.1)
            if ready:
                line = self._proc.stdout.readline()
                if line.startswith(_READY):
                    return self
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().strip()
                hint = "" if INSTALL_HINT in err else f" (if GStreamer is missing: {INSTALL_HINT})"
                raise RuntimeError(f"RTSP test server exited with code {self._proc.returncode}: {err}{hint}")
        self.kill()
        raise RuntimeError(f"RTSP test server did not become ready within {self._ready_timeout_s} s")

    def kill(self) -> None:
        """End the server at once, without closing its sessions politely."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._close_pipes()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._proc is not None:
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()


@contextlib.contextmanager
def rtsp_server(path: str | os.PathLike[str], port: int | None = None) -> Iterator[RtspServerProcess]:
    """Serve ``path`` for the ``with`` block; the yielded object has ``.url``, ``.kill()`` and ``.start()``."""
    server = RtspServerProcess(path, port).start()
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {SYSTEM_PYTHON} {sys.argv[0]} VIDEO PORT")
    serve(sys.argv[1], int(sys.argv[2]))
