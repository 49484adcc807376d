"""Stream-level events (no track): start, end, error, resume, reconnect, live watchlist changes, and a
sink that turned degraded (dropping or failing records) or recovered.

Their ids are deterministic from (stream, frame_index, type), and for watchlist changes from the
change too, so a re-run or a retried delivery produces the same ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from operators.records import Event


def stream_event(
    type_: str, job: str, stream_id: str, frame_index: int | None, ts: datetime, *,
    pts_s: float | None = None, error: str | BaseException | None = None, **details: Any,
) -> Event:
    """A stream-level event (no track); its id is deterministic from (stream, frame_index, type)."""
    return Event(
        type=type_, job=job, stream_id=stream_id, ts=ts, frame_index=frame_index, pts_s=pts_s,
        error=None if error is None else str(error), details=details,
    )



class StreamEvents:
    """The stream events of one stream; :class:`operators.lifecycle.StreamTracks` builds on it."""

    def __init__(self, job: str, stream_id: str, source: str = "", model: str = "") -> None:
        self.job, self.stream_id, self.source, self.model = job, stream_id, source, model

    def stream_start(self, frame_index: int, ts: datetime, *, pts_s: float | None = None, **details: Any) -> Event:
        return stream_event("stream_start", self.job, self.stream_id, frame_index, ts, pts_s=pts_s,
                            source=self.source, model=self.model, **details)

    def stream_end(self, frame_index: int, ts: datetime, *, pts_s: float | None = None, **details: Any) -> Event:
        return stream_event("stream_end", self.job, self.stream_id, frame_index, ts, pts_s=pts_s, **details)

    def stream_error(
        self, frame_index: int, ts: datetime, error: str | BaseException, *, pts_s: float | None = None, **details: Any
    ) -> Event:
        return stream_event("stream_error", self.job, self.stream_id, frame_index, ts, pts_s=pts_s, error=error, **details)

    def stream_resume(self, frame_index: int, ts: datetime, *, pts_s: float | None = None, **details: Any) -> Event:
        """The stream carries on from its resume point at ``frame_index`` after its process died."""
        return stream_event("stream_resume", self.job, self.stream_id, frame_index, ts, pts_s=pts_s, **details)

    def stream_reconnect(
        self, frame_index: int, ts: datetime, *, attempt: int, error: str | BaseException | None, downtime_s: float,
        pts_s: float | None = None,
    ) -> Event:
        return stream_event("stream_reconnect", self.job, self.stream_id, frame_index, ts, pts_s=pts_s, error=error,
                            attempt=attempt, downtime_s=downtime_s)

    def sink_degraded(self, frame_index: int, ts: datetime, *, sink: str, reason: str, pts_s: float | None = None,
                      **details: Any) -> Event:
        """``sink`` began dropping or failing records (``reason``); the other sinks keep every record."""
        return stream_event("sink_degraded", self.job, self.stream_id, frame_index, ts, pts_s=pts_s, error=reason,
                            sink=sink, **details)

    def sink_recovered(self, frame_index: int, ts: datetime, *, sink: str, pts_s: float | None = None,
                       **details: Any) -> Event:
        """``sink`` delivers again after it was degraded."""
        return stream_event("sink_recovered", self.job, self.stream_id, frame_index, ts, pts_s=pts_s, sink=sink,
                            **details)

    def watchlist_changed(
        self, frame_index: int, ts: datetime, change: dict[str, Any], *, source: str, command: str,
        pts_s: float | None = None,
    ) -> Event:
        """A rule ``change`` (``RuleChange.to_dict()``) is in force from ``frame_index`` on."""
        return Event(type="watchlist_changed", job=self.job, stream_id=self.stream_id, ts=ts, frame_index=frame_index,
                     pts_s=pts_s, concept=change.get("concept"),
                     details={"change": change, "source": source, "command": command})

    def watchlist_rejected(
        self, frame_index: int | None, ts: datetime, problem: str, *, source: str, command: Any,
        pts_s: float | None = None,
    ) -> Event:
        """A command (its JSON, or its text when it was not JSON) was refused; nothing changed."""
        return Event(type="watchlist_rejected", job=self.job, stream_id=self.stream_id, ts=ts, frame_index=frame_index,
                     pts_s=pts_s, error=problem, details={"change": {"command": command}, "source": source})
