"""Driving a running job from a test: waits on what the job reports, never on elapsed time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

HANG_GUARD_S = 300.0  # only ends a wait that would otherwise hang; tests never expect to wait this long


def wait_for(condition, what: str, guard_s: float = HANG_GUARD_S, interval_s: float = 0.05):
    """Poll ``condition()`` until it returns something true, and return that."""
    deadline = time.monotonic() + guard_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {guard_s} s")
        time.sleep(interval_s)
    return value


class BackgroundJob:
    """``run_job`` on a thread of its own; :meth:`start` returns once the job's actors exist."""

    def __init__(self, job_path: str | Path, **options) -> None:
        self._args = (str(job_path),)
        self._options = {"show_progress": False, **options}
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job", daemon=True)
        self.actors = None  # JobActors, once started
        self._result = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        from pipeline.driver import run_job

        try:
            self._result = run_job(*self._args, on_started=self._on_started, **self._options)
        except BaseException as e:  # noqa: BLE001 - handed to the test by result()
            self._error = e
        finally:
            self._started.set()

    def _on_started(self, actors) -> None:
        self.actors = actors
        self._started.set()

    def start(self):
        """Start the job and return its actors; raise what the job raised if it never got that far."""
        self._thread.start()
        assert self._started.wait(HANG_GUARD_S), "the job's streams did not start"
        if self.actors is None:
            raise self._error or AssertionError("the job ended before its streams started")
        return self.actors

    def stop_streams(self) -> None:
        for stream in self.actors.streams.values() if self.actors else ():
            stream.stop.remote()

    def join(self) -> None:
        self._thread.join(HANG_GUARD_S)
        assert not self._thread.is_alive(), "the job did not stop"

    @property
    def done(self) -> bool:
        return self._started.is_set() and not self._thread.is_alive()

    def result(self):
        """The job's ``JobResult``, or what it raised."""
        if self._error is not None:
            raise self._error
        return self._result
