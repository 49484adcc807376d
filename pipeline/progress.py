"""What a person running a job sees: a live table while it runs and a summary at the end."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rich.console import Console
from rich.live import Live
from rich.table import Table

from operators.redaction import redact_text
from pipeline.stream_stats import StreamStats

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

    def update(self, snapshot: Mapping[str, StreamStats]) -> None:
        if not self._live:
            return
        self._live.update(self.table(snapshot))

    def table(self, snapshot: Mapping[str, StreamStats]) -> Table:
        """The live table of ``snapshot``; fps is measured since the previous table."""
        table = Table(*COLUMNS, title=f"sam3-stream: {self.job}")
        for sid, s in sorted(snapshot.items()):
            c = s.counters
            t0, f0 = self._last.get(sid, (s.updated, c.frames_processed))
            dt = max(s.updated - t0, 1e-6)
            fps = (c.frames_processed - f0) / dt if dt > 1e-3 else 0.0
            self._last[sid] = (s.updated, c.frames_processed)
            table.add_row(sid, s.state.value, str(c.frames_processed), f"{fps:.1f}", str(s.objects), str(c.tracks),
                          str(c.records), str(c.frames_dropped), str(c.sink_errors + (1 if s.error else 0)))
        return table


def summary_table(job, finals: Mapping[str, StreamStats], console: Console | None = None) -> None:
    """Per stream: frames, tracks, events, errors (never with the secrets of its source URL) and where
    the outputs are."""
    table = Table("stream", "state", "frames", "tracks", "records", "events", "errors",
                  title=f"job {job.name}: summary")
    locations: dict[str, str] = {}
    for spec in job.streams:
        s = finals.get(spec.id)
        if s is None:  # the job was interrupted before the stream ended
            table.add_row(spec.id, "?", "0", "0", "0", "0", "")
            continue
        c = s.counters
        errors = redact_text(s.error, spec.source) if s.error else (f"{c.sink_errors} sink errors" if c.sink_errors else "")
        locations.update(s.outputs)
        table.add_row(spec.id, s.state.value, str(c.frames_processed), str(c.tracks), str(c.records), str(c.events),
                      errors)
    console = console or Console()
    console.print(table)
    for sink, where in locations.items():
        console.print(f"{sink}: {where}")
