"""The exit codes of every ``sam3-stream`` command, defined once."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2  # bad arguments, input or configuration: one line on stderr, nothing was run
    PARTIAL = 3  # it ran, but part failed: some streams of a job, or a video that stopped decoding
    ABORTED = 130  # interrupted twice (SIGINT/SIGTERM): stopped without draining, as shells report Ctrl-C
