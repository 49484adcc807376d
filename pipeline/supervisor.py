"""A command that runs a Ray job under a small supervisor, so that no process it starts outlives it,
Ray's included, however it ends (a normal end, SIGTERM, or SIGKILL of the command):

* The command (the supervisor, which never imports Ray) starts the job in a child process, in a
  session of its own, and forwards SIGINT, SIGTERM and SIGHUP to it. It holds the write end of a
  pipe whose read end the child watches. Once the child is gone it kills whatever the child left.
* The child is the Ray driver. It is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): every
  process it starts, however deep and even after its parent died (Ray's agents once the raylet is
  gone), stays its descendant. When the job ends it kills the descendants still alive; when the
  pipe reads end-of-file (the supervisor died, even by SIGKILL, which no handler sees) it kills
  them at once and exits: a SIGKILL is no graceful stop, and what was not flushed is not written.

``cli.main(argv)`` called from Python (tests, tools) runs the job in the calling process instead.
``sam3-stream run`` and ``sam3-stream index`` both run this way (:func:`supervised`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

PARENT_FD_ENV = "SAM3_STREAM_PARENT_FD"  # set for the child: the pipe end that reads EOF when the supervisor dies
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KILL_GRACE_S = 3.0  # SIGTERM, then SIGKILL for what is still there
_PR_SET_CHILD_SUBREAPER = 36


def supervised(args: argparse.Namespace, job: Callable[[], int]) -> int:
    """Run ``job`` (the command's work) supervised when the command came from a shell, else in-process."""
    command_line = getattr(args, "command_line", None)  # set by cli.main when it parsed sys.argv itself
    if command_line is not None and PARENT_FD_ENV not in os.environ:
        return supervise(command_line)
    parent_fd = os.environ.pop(PARENT_FD_ENV, None)  # Ray's workers need not inherit it
    guard = JobProcesses(int(parent_fd)) if parent_fd is not None else None
    try:
        return job()
    finally:
        if guard is not None:
            guard.kill_descendants()


def supervise(argv: list[str]) -> int:
    """Run ``sam3-stream ARGV`` in a child process (see the module docstring); its exit code, or 128 + the
    signal that ended it."""
    _become_subreaper()
    started: list[subprocess.Popen] = []

    def forward(signum, _frame) -> None:
        for child in started:  # a signal before the child exists has nobody to stop yet: it is dropped
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    read_fd, write_fd = os.pipe()  # write_fd stays open here, unused, until this process ends
    env = {**os.environ, PARENT_FD_ENV: str(read_fd)}
    try:
        child = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], env=env, pass_fds=(read_fd,),
                                 start_new_session=True)
        started.append(child)
        os.close(read_fd)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # its process group: all of it, unless it was SIGKILLed itself
        _kill(_descendants())  # and what left that group (Ray's workers have their own), reparented to us
        os.close(write_fd)
    return code if code >= 0 else 128 - code


class JobProcesses:
    """In the child: keeps every process the job starts its descendant, kills them when the job ends, and
    kills them and itself when the supervisor dies."""

    def __init__(self, parent_fd: int) -> None:
        _become_subreaper()
        self._parent_fd = parent_fd
        threading.Thread(target=self._watch_parent, name="supervisor-watch", daemon=True).start()

    def _watch_parent(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._parent_fd, 1):
                pass
        # end of file: the supervisor is gone (its signals with it); nobody is left to stop this job
        logger.error("sam3-stream was killed: stopping the job's processes now, without draining")
        self.kill_descendants()
        os._exit(137)

    def kill_descendants(self) -> None:
        _kill(_descendants())


def _descendants() -> list[int]:
    """The pids of this process's living descendants (Linux ``/proc``; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _process_parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _process_parents() -> dict[int, int]:
    """pid -> parent pid of every process that is not a zombie."""
    out = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces and parentheses
            except OSError:
                continue  # gone meanwhile
            if fields[0] != b"Z":
                out[int(name)] = int(fields[1])
    return out


def _kill(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL after ``KILL_GRACE_S`` for those still alive; our own children are reaped."""
    if not pids:
        return
    logger.debug("stopping %d leftover process(es) of the job: %s", len(pids), pids)
    _signal_all(pids, signal.SIGTERM)
    for then in (signal.SIGKILL, None):
        deadline = time.monotonic() + KILL_GRACE_S
        while (pids := [p for p in pids if p in _process_parents()]) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.05)
        if not pids:
            break
        if then is not None:
            _signal_all(pids, then)
    _reap()


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _reap() -> bool:
    """Collect the exit status of our ended children (a subreaper inherits orphans); True if one was reaped."""
    reaped = False
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            reaped = True
    return reaped


def _become_subreaper() -> None:
    """Orphans of our descendants are re-parented to us rather than to init, so we can still find them."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())


def install_stop_handlers(stop: threading.Event, cleanup, *, stopping: str, reload: threading.Event | None = None) -> None:
    """In the job's process: a first SIGINT/SIGTERM sets ``stop`` (logging ``stopping``, what the job does now), a
    second raises KeyboardInterrupt (abort); SIGHUP sets ``reload`` when given. ``cleanup`` (an ExitStack) puts
    the previous handlers back. Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    if reload is not None and hasattr(signal, "SIGHUP"):
        previous_hup = signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())
        cleanup.callback(signal.signal, signal.SIGHUP, previous_hup)

    def handler(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop waiting
        logger.warning("received %s: %s (send it again to abort)", signal.Signals(signum).name, stopping)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    cleanup.callback(lambda: [signal.signal(s, h) for s, h in previous.items()])
