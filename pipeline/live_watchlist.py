"""A stream actor's live watchlist changes: commands queued by the driver, applied between two frames.

The stream actor owns its rules (in its track table) and its engine session's concepts; the
driver only forwards commands (from the control topic, or a reloaded job file). A command is
applied at a frame boundary: the frames in flight are collected first, so every frame is
decided by one set of rules, and the change is in force from the next frame sent, whose index
the ``watchlist_changed`` event carries. A command the stream's rules make impossible (removing
a concept it does not watch, ...) is answered by a ``watchlist_rejected`` event; nothing changes.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from operators.lifecycle import StreamTracks
from operators.records import Event
from operators.watchlist_changes import CommandError, ControlCommand, plan_changes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """A command the driver could read but not hand over as a ``ControlCommand``."""

    problem: str
    command: Any  # its JSON, or its text
    source: str


class LiveWatchlist:
    def __init__(self, stream_id: str):
        self.stream_id = stream_id
        self._queue: queue.SimpleQueue[ControlCommand | Rejection] = queue.SimpleQueue()

    def submit(self, item: ControlCommand | Rejection) -> None:
        """Queue a command (any thread); the stream applies it before its next frame."""
        self._queue.put(item)

    @property
    def pending(self) -> bool:
        return not self._queue.empty()

    def apply(self, tracks: StreamTracks, link: Any, frame_index: int, pts_s: float,
              publish: Callable[[list[Event]], None]) -> None:
        """Apply every queued command from frame ``frame_index`` on; ``link`` must have nothing in flight."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Rejection):
                publish([tracks.watchlist_rejected(frame_index, _now(), item.problem, source=item.source,
                                                   command=item.command, pts_s=pts_s)])
                continue
            try:
                events = self._apply_one(tracks, link, item, frame_index, pts_s)
            except (CommandError, ValueError) as e:
                logger.warning("stream %s: %s command rejected: %s", self.stream_id, item.source, e)
                events = [tracks.watchlist_rejected(frame_index, _now(), str(e), source=item.source,
                                                    command=item.to_dict(), pts_s=pts_s)]
            publish(events)

    def _apply_one(self, tracks: StreamTracks, link: Any, command: ControlCommand, frame_index: int,
                   pts_s: float) -> list[Event]:
        changes = plan_changes(tracks.rules, command)
        if not changes:
            logger.info("stream %s: %s %s changes nothing", self.stream_id, command.source, command.command)
            return []
        added = [c.concept for c in changes if c.kind == "add"]
        removed = [c.concept for c in changes if c.kind == "remove"]
        remaining = [c.new for c in changes if c.new is not None]
        remaining += [r for concept, r in tracks.rules.items() if all(c.concept != concept for c in changes)]
        # the engine first: when it refuses, the table keeps the rules the engine still detects
        link.change_concepts(added, removed, min(r.threshold for r in remaining))
        events, ends = [], []
        for change in changes:
            if change.kind == "remove":
                ends += tracks.remove_rule(change.concept, frame_index, _now())
            else:
                tracks.set_rule(change.new)
            events.append(tracks.watchlist_changed(frame_index, _now(), change.to_dict(), source=command.source,
                                                   command=command.command, pts_s=pts_s))
            logger.info("stream %s: watchlist %s %r from frame %d (%s)", self.stream_id, change.kind, change.concept,
                        frame_index, command.source)
        return events + ends


def _now() -> datetime:
    return datetime.now(UTC)
