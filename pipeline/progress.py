"""What a person running a job sees: a live table while it runs and a summary at the end."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table

COLUMNS = ("stream", "state", "frames", "fps", "objects", "tracks", "records", "dropped", "errors")


class JobProgress:
    def __init__(self, job: str, enabled: bool = True):
        self.job = job
        self.enabled = enabled and sys.stderr.isatty()
        self._live = Live(console=Console(stderr=True), refresh_per_second=2, transient=True) if self.enabled else None
        self._last: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> JobProgress:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def update(self, snapshot: dict[str, dict]) -> None:
        if not self._live:
            return
        table = Table(*COLUMNS, title=f"sam3-stream: {self.job}")
        for sid, s in sorted(snapshot.items()):
            frames = s.get("frames_processed", 0)
            t0, f0 = self._last.get(sid, (s.get("updated", 0.0), frames))
            dt = max(s.get("updated", 0.0) - t0, 1e-6)
            fps = (frames - f0) / dt if dt > 1e-3 else 0.0
            self._last[sid] = (s.get("updated", 0.0), frames)
            table.add_row(sid, s.get("state", "?"), str(frames), f"{fps:.1f}", str(s.get("objects", 0)),
                          str(s.get("tracks", 0)), str(s.get("records", 0)), str(s.get("frames_dropped", 0)),
                          str(s.get("sink_errors", 0) + (1 if s.get("error") else 0)))
        self._live.update(table)


def summary_table(job, finals: dict[str, dict]) -> None:
    """Per stream: frames, tracks, events, errors and where the outputs are."""
    table = Table("stream", "state", "frames", "tracks", "records", "events", "errors",
                  title=f"job {job.name}: summary")
    locations: dict[str, str] = {}
    for spec in job.streams:
        s = finals.get(spec.id, {})
        errors = s.get("error") or (f"{s.get('sink_errors')} sink errors" if s.get("sink_errors") else "")
        locations.update(s.get("outputs", {}))
        table.add_row(spec.id, s.get("state", "?"), str(s.get("frames_processed", 0)), str(s.get("tracks", 0)),
                      str(s.get("records", 0)), str(s.get("events", 0)), errors)
    console = Console()
    console.print(table)
    for sink, where in locations.items():
        console.print(f"{sink}: {where}")
