"""The index run's live display: files done of the plan, frames, throughput and time left."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class IndexProgress:
    def __init__(self, total_files: int, enabled: bool = True):
        self.enabled = enabled
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
            TextColumn("{task.fields[frames]:,} frames ({task.fields[fps]:.1f}/s)"),
            TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled, transient=False,
        )
        self._task = self._progress.add_task("files", total=total_files, frames=0, fps=0.0, failed=0)

    def __enter__(self) -> IndexProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, files_done: int, failed: int, frames: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self._progress.update(self._task, completed=files_done, frames=frames, fps=frames / elapsed, failed=failed)
