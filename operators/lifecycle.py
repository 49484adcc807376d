"""Per-stream track table: turns the engine's per-frame objects into published observations and events.

Publication rule, per watchlist concept (objects of concepts not in the watchlist are ignored):
an object *qualifies* on a frame as its ``WatchRule`` says (score and zones, see
``operators.watchlist_rules``). The object is *published* once it has qualified on ``min_frames``
consecutive processed frames spanning at least ``min_seconds`` of presentation time, and is not
tentative (unless ``publish_tentative``);
tentative frames count towards the streak. Before publication a frame that does not qualify
(absent, low score, outside the zones) restarts the streak.

Lifecycle: the first published frame emits ``track_start`` and, like every later qualifying
frame, one observation. A published track ends (``track_end``) when it has not been published
for ``end_after_frames`` consecutive processed frames (absent, or present but not qualifying),
when the engine retracts it, or at :meth:`StreamTracks.close`. ``track_end`` carries the
frame index and pts of the track's *last observation* (so its event id does not depend on when
the end was noticed), ``duration_s`` from the first to the last observation, ``max_score`` and
``best_frame_index`` (first frame with that score), and ``details`` with ``reason``
("lost" | "retracted" | "stream_end" | "concept_removed"), ``decided_frame_index`` (the frame that ended it) and
``observations``. ``track_start`` details give ``first_frame_index``/``first_pts_s``, where the
qualifying streak began. Ended tracks are dropped, so memory stays proportional to the live objects.

Rules can change while the stream runs (:meth:`StreamTracks.set_rule`, :meth:`StreamTracks.remove_rule`,
between two frames): a changed rule decides from the next frame on, live tracks keep their ids.

Identity: ``track_id`` in the output is a durable stream-level id. A new engine id keeps its own
number when that number has never been issued on this stream, otherwise it gets the next unused
number; ids are never reused. The table remembers each live track's last box (its relink memory,
saved with the table): after an engine restart, :meth:`StreamTracks.relink_by_boxes` hands the
new session's objects the durable ids of the tracks they overlap, and :meth:`StreamTracks.relink`
applies such a mapping of new engine ids onto the durable ids they continue.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from operators.records import Event, TrackObservation
from operators.relink import Box, match_tracks
from operators.stream_events import StreamEvents
from operators.watchlist_rules import ZONE_ANCHORS, WatchRule, ZoneAnchor
from sam3_runtime.video.types import FrameResult, TrackedObject

logger = logging.getLogger(__name__)

STATE_VERSION = 3  # of state_dict(); 2 added each track's last box, 3 the rules in force
_TIME_EPS_S = 1e-6  # pts differences are sums of float frame times


def _box(values: Iterable[float]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


@dataclass
class _Track:
    durable_id: int
    concept: str
    engine_id: int | None
    streak_frames: int = 0
    streak_frame: int = -1  # frame and pts where the current qualifying streak began
    streak_pts: float = 0.0
    missing: int = 0
    published: bool = False
    start_frame: int = -1
    start_pts: float = 0.0
    last_frame: int = -1
    last_pts: float = 0.0
    max_score: float = -math.inf
    best_frame: int = -1
    observations: int = 0
    last_box: Box | None = None  # where the engine last saw it, qualifying or not: the relink memory


def saved_rules(state: Mapping[str, Any]) -> list[WatchRule] | None:
    """The rules in force when :meth:`StreamTracks.state_dict` was taken (None before state version 3)."""
    rules = state.get("rules")
    return None if rules is None else [WatchRule.from_any(rule) for rule in rules]


class StreamTracks(StreamEvents):
    """The track table of one stream; see the module docstring for the rules it applies."""

    def __init__(
        self,
        job: str,
        stream_id: str,
        source: str,
        model: str,
        rules: Iterable[Any],
        *,
        end_after_frames: int = 30,
        publish_tentative: bool = False,
        zone_anchor: ZoneAnchor = "centroid",
        first_id: int = 0,
    ) -> None:
        if end_after_frames < 1:
            raise ValueError(f"end_after_frames must be >= 1, got {end_after_frames}")
        if zone_anchor not in ZONE_ANCHORS:
            raise ValueError(f"zone_anchor must be 'centroid', 'box_center' or 'box_bottom', got {zone_anchor!r}")
        self.job, self.stream_id, self.source, self.model = job, stream_id, source, model
        self.end_after_frames = end_after_frames
        self.publish_tentative = publish_tentative
        self.zone_anchor: ZoneAnchor = zone_anchor
        self.rules: dict[str, WatchRule] = {}
        for raw in rules:
            rule = WatchRule.from_any(raw)
            if rule.concept in self.rules:
                raise ValueError(f"concept {rule.concept!r} appears twice in the watchlist of stream {stream_id!r}")
            self.rules[rule.concept] = rule
        self._live: dict[int, _Track] = {}  # durable id -> live track (candidates and published)
        self._by_engine: dict[int, _Track] = {}  # current engine session's id -> its track
        self._pending: dict[int, int] = {}  # relinked engine id not seen yet -> durable id
        self._next_id = first_id  # above 0 when earlier rows of the same source hold the lower ids

    # -- identity -----------------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """The lowest durable id never issued on this stream."""
        return self._next_id

    def live_ids(self, published_only: bool = True) -> list[int]:
        return [d for d, t in self._live.items() if t.published or not published_only]

    def durable_id(self, engine_id: int) -> int | None:
        track = self._by_engine.get(engine_id)
        return track.durable_id if track is not None else self._pending.get(engine_id)

    def _new_track(self, engine_id: int, concept: str) -> _Track:
        if engine_id in self._pending:
            durable = self._pending.pop(engine_id)
        else:
            durable = engine_id if engine_id >= self._next_id else self._next_id
        self._next_id = max(self._next_id, durable + 1)
        track = _Track(durable, concept, engine_id)
        self._live[durable] = track
        self._by_engine[engine_id] = track
        return track

    def last_boxes(self) -> dict[int, tuple[str, Box]]:
        """``{durable id: (concept, last box)}`` of the live tracks (candidates included) seen so far."""
        return {d: (t.concept, t.last_box) for d, t in self._live.items() if t.last_box is not None}

    def relink_by_boxes(self, objects: Iterable[TrackedObject], min_iou: float = 0.3) -> dict[int, int]:
        """Start a new engine session from the objects of its first result, before :meth:`update`.

        Each new object of a live track's concept whose box overlaps that track's last box takes
        its durable id (best overlaps first, see ``match_tracks``); then :meth:`relink` applies it.
        Returns the mapping, new engine id -> durable id.
        """
        new = [(o.track_id, o.concept, o.box_xyxy) for o in objects]
        mapping = match_tracks(self.last_boxes(), new, min_iou=min_iou)
        self.relink(mapping)
        return mapping

    def relink(self, mapping: Mapping[int, int]) -> None:
        """Start a new engine session: ``mapping`` gives new engine id -> durable id it continues.

        Call it after the engine was re-created and before the new session's first result. Every
        engine id of the old session is forgotten. Mapped live tracks carry on (same durable id,
        same start, score history); a mapped id that is not live (ended) starts a fresh lifecycle
        under that id when its engine id appears. Published tracks left unmapped end after
        ``end_after_frames`` frames as lost; unpublished candidates of the old session are dropped.
        """
        durables = list(mapping.values())
        if len(set(durables)) != len(durables):
            raise ValueError(f"relink: two engine ids map to the same durable id in {dict(mapping)}")
        unknown = [d for d in durables if not 0 <= d < self._next_id]
        if unknown:
            raise ValueError(f"relink: durable ids {unknown} were never issued on stream {self.stream_id!r} (next id {self._next_id})")
        for track in list(self._live.values()):
            track.engine_id = None
            if not track.published:
                del self._live[track.durable_id]
        self._by_engine, self._pending = {}, {}
        for engine_id, durable in mapping.items():
            track = self._live.get(durable)
            if track is None:
                self._pending[int(engine_id)] = durable
            else:
                track.engine_id = int(engine_id)
                self._by_engine[int(engine_id)] = track

    # -- resume point ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The table as plain JSON-able data: the id counter and every live track's history and last box.

        Engine ids are left out: they belong to an engine session, which does not outlive the
        stream that restores this state. After :meth:`load_state_dict` the tracks wait for
        :meth:`relink` to hand them to the new session's engine ids.
        """
        tracks = []
        for track in self._live.values():
            fields = dataclasses.asdict(track)
            del fields["engine_id"]
            fields["max_score"] = None if track.max_score == -math.inf else track.max_score
            fields["last_box"] = None if track.last_box is None else list(track.last_box)
            tracks.append(fields)
        return {"version": STATE_VERSION, "stream_id": self.stream_id, "next_id": self._next_id, "tracks": tracks,
                "rules": [rule.to_dict() for rule in self.rules.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` output (same stream); replaces the whole table.

        Version 1 (before the table kept last boxes) loads too; its tracks have a last box only
        where the caller added one. The rules stay those the table was built with (see
        :func:`saved_rules` for the ones in the state).
        """
        if state.get("version") not in (1, 2, STATE_VERSION) or state.get("stream_id") != self.stream_id:
            raise ValueError(f"state of stream {state.get('stream_id')!r} (version {state.get('version')}) cannot be "
                             f"loaded into stream {self.stream_id!r}: resume a stream only from its own resume point")
        live = {}
        for fields in state["tracks"]:
            box = fields.get("last_box")
            track = _Track(**{**fields, "engine_id": None, "last_box": None if box is None else _box(box)})
            track.max_score = -math.inf if track.max_score is None else track.max_score
            if track.concept not in self.rules:
                continue  # the watchlist lost this concept: the track is not followed any more
            live[track.durable_id] = track
        self._live, self._by_engine, self._pending = live, {}, {}
        self._next_id = max([int(state["next_id"]), *(d + 1 for d in live)])

    # -- live watchlist changes ------------------------------------------------------------------

    def set_rule(self, rule: Any) -> WatchRule | None:
        """Add a concept's rule or replace it; it decides from the next :meth:`update` on. Returns the old rule.

        Live tracks of the concept keep their ids, streaks and histories.
        """
        new = WatchRule.from_any(rule)
        old = self.rules.get(new.concept)
        self.rules[new.concept] = new
        return old

    def remove_rule(self, concept: str, frame_index: int, ts: datetime) -> list[Event]:
        """Stop watching ``concept``: its published tracks end (reason ``concept_removed``), its candidates go.

        Raises ``KeyError`` when the concept is not watched.
        """
        if concept not in self.rules:
            raise KeyError(f"stream {self.stream_id!r} does not watch {concept!r} (it watches {sorted(self.rules)})")
        del self.rules[concept]
        events = []
        for track in [t for t in self._live.values() if t.concept == concept]:
            self._drop(track)
            self._pending = {e: d for e, d in self._pending.items() if d != track.durable_id}
            if track.published:
                events.append(self._end_event(track, "concept_removed", frame_index, ts))
        return events

    # -- per frame ----------------------------------------------------------------------------

    def update(
        self, result: FrameResult, pts_s: float, ingest_ts: datetime, *, frame_index: int | None = None
    ) -> tuple[list[TrackObservation], list[Event]]:
        """Apply one processed frame; returns its observations and the events it causes.

        ``frame_index`` overrides ``result.frame_index`` (pass the stream's own frame index when
        the engine's counter restarted). A result with ``error`` set was not processed: it
        changes nothing and returns nothing.
        """
        if not result.ok:
            return [], []
        index = result.frame_index if frame_index is None else frame_index
        events: list[Event] = []
        for engine_id in result.retracted_ids:
            track = self._by_engine.pop(engine_id, None)
            if track is not None:
                self._live.pop(track.durable_id, None)
                if track.published:
                    events.append(self._end_event(track, "retracted", index, ingest_ts))

        present: set[int] = set()
        published: list[tuple[_Track, TrackedObject]] = []
        for obj in result.objects:
            rule = self.rules.get(obj.concept)
            if rule is None or obj.track_id in result.retracted_ids:
                continue
            track = self._by_engine.get(obj.track_id) or self._new_track(obj.track_id, obj.concept)
            present.add(track.durable_id)
            track.last_box = _box(obj.box_xyxy)
            qualifies = rule.qualifies(obj, self.zone_anchor)
            if not track.published:
                if not qualifies:
                    track.streak_frames = 0
                    continue
                if track.streak_frames == 0:
                    track.streak_frame, track.streak_pts = index, pts_s
                track.streak_frames += 1
            if not qualifies or (obj.tentative and not self.publish_tentative):
                continue
            if not track.published:
                if track.streak_frames < rule.min_frames or pts_s - track.streak_pts < rule.min_seconds - _TIME_EPS_S:
                    continue
                track.published, track.start_frame, track.start_pts = True, index, pts_s
                events.append(self._start_event(track, index, pts_s, ingest_ts))
            published.append((track, obj))

        for track, obj in published:
            track.missing, track.last_frame, track.last_pts = 0, index, pts_s
            track.observations += 1
            if obj.score > track.max_score:
                track.max_score, track.best_frame = float(obj.score), index
        emitted = {track.durable_id for track, _ in published}
        for track in list(self._live.values()):
            if track.durable_id in emitted:
                continue
            if track.published or track.durable_id not in present:
                track.missing += 1
            else:
                track.missing = 0
            if track.durable_id not in present:
                track.streak_frames = 0
            if track.missing >= self.end_after_frames:
                self._drop(track)
                if track.published:
                    events.append(self._end_event(track, "lost", index, ingest_ts))
        return self._observations(published, index, pts_s, ingest_ts), events

    def close(self, frame_index: int, pts_s: float, ts: datetime | None = None) -> list[Event]:
        """End every live published track (the stream is over) and clear the table.

        ``frame_index``/``pts_s`` say where the stream stopped; they go to the ``track_end``
        details (``decided_frame_index``, ``decided_pts_s``), the events keep each track's last
        observation as their frame.
        """
        ts = ts or datetime.now(UTC)
        events = [
            self._end_event(t, "stream_end", frame_index, ts, decided_pts_s=pts_s)
            for t in self._live.values() if t.published
        ]
        self._live, self._by_engine, self._pending = {}, {}, {}
        return events

    # -- records ------------------------------------------------------------------------------

    def _drop(self, track: _Track) -> None:
        self._live.pop(track.durable_id, None)
        if track.engine_id is not None and self._by_engine.get(track.engine_id) is track:
            del self._by_engine[track.engine_id]

    def _observations(
        self, published: Sequence[tuple[_Track, TrackedObject]], index: int, pts_s: float, ingest_ts: datetime
    ) -> list[TrackObservation]:
        if not published:
            return []
        return [
            TrackObservation(
                job=self.job, stream_id=self.stream_id, source=self.source, frame_index=index, pts_s=pts_s,
                ingest_ts=ingest_ts, track_id=track.durable_id, concept=track.concept, score=float(obj.score),
                box_xyxy=tuple(float(v) for v in obj.box_xyxy), mask=dict(obj.rle()), area_px=obj.area_px,
                model=self.model,
            )
            for track, obj in published
        ]

    def _start_event(self, track: _Track, index: int, pts_s: float, ts: datetime) -> Event:
        return Event(
            type="track_start", job=self.job, stream_id=self.stream_id, ts=ts, track_id=track.durable_id,
            concept=track.concept, frame_index=index, pts_s=pts_s,
            details={"first_frame_index": track.streak_frame, "first_pts_s": track.streak_pts},
        )

    def _end_event(self, track: _Track, reason: str, decided: int, ts: datetime, **details: Any) -> Event:
        return Event(
            type="track_end", job=self.job, stream_id=self.stream_id, ts=ts, track_id=track.durable_id,
            concept=track.concept, frame_index=track.last_frame, pts_s=track.last_pts,
            duration_s=track.last_pts - track.start_pts, max_score=track.max_score, best_frame_index=track.best_frame,
            details={"reason": reason, "decided_frame_index": decided, "observations": track.observations, **details},
        )
