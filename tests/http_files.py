"""A local HTTP file server for source tests: serves a directory on loopback."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

HANG_GUARD_S = 60.0  # only ends a shutdown that would hang


@contextlib.contextmanager
def http_files(directory: Path, fail_first: str | None = None):
    """Serves ``directory`` and yields its ``host:port``; the first request for the file named
    ``fail_first`` gets a 503 (a source's first connection fails, its retry succeeds)."""
    failed: set[str] = set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server dispatches to
            if fail_first is not None and self.path.split("?")[0] == f"/{fail_first}" and not failed:
                failed.add(self.path)
                self.send_error(503)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(HANG_GUARD_S)
