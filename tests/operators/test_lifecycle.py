"""StreamTracks: publication rules, track lifecycle events, durable ids and re-linking."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from operators.lifecycle import StreamTracks, saved_rules
from operators.records import EVENT_SCHEMA, TRACK_SCHEMA
from operators.watchlist_rules import WatchRule
from operators.watchlist_rules import inside as _inside
from sam3_runtime.masks import decode_rle
from sam3_runtime.video.types import FrameResult, TrackedObject

H, W = 60, 80
FPS = 10.0
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class Rule:  # the job spec's ConceptRule has exactly these fields
    concept: str
    threshold: float = 0.5
    min_frames: int = 1
    min_seconds: float = 0.0
    zones: list = field(default_factory=list)


def obj(track_id, score=0.9, box=(10, 10, 20, 30), concept="person", tentative=False, mask=None):
    if mask is None:
        mask = np.zeros((H, W), dtype=bool)
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = True
    return TrackedObject.from_mask(mask, track_id=track_id, concept=concept, score=score, tracker_score=score,
                                   box_xyxy=tuple(float(v) for v in box), tentative=tentative)


def frame(tracks, index, objects=(), retracted=()):
    result = FrameResult("cam1", index, W, H, objects=list(objects), retracted_ids=list(retracted))
    return tracks.update(result, index / FPS, T0 + timedelta(seconds=index / FPS))


def make(*rules, **kwargs):
    return StreamTracks("job1", "cam1", "rtsp://cam/1", "facebook/sam3", list(rules) or [Rule("person")], **kwargs)


def test_threshold_gates_publication_and_observation_contents():
    tracks = make(Rule("person", threshold=0.6))
    for i in range(3):  # below threshold, and a concept not on the watchlist
        assert frame(tracks, i, [obj(0, score=0.5), obj(1, concept="dog")]) == ([], [])
    observations, events = frame(tracks, 3, [obj(0, score=0.6, box=(5, 6, 25, 16)), obj(1, concept="dog")])
    assert [e.type for e in events] == ["track_start"]
    assert (events[0].track_id, events[0].frame_index, events[0].pts_s) == (0, 3, pytest.approx(0.3))
    (o,) = observations
    assert (o.job, o.stream_id, o.source, o.model) == ("job1", "cam1", "rtsp://cam/1", "facebook/sam3")
    assert (o.frame_index, o.pts_s, o.ingest_ts, o.track_id, o.concept) == (3, 0.3, T0 + timedelta(seconds=0.3), 0, "person")
    assert o.score == pytest.approx(0.6) and o.box_xyxy == (5.0, 6.0, 25.0, 16.0) and o.area_px == 200
    decoded = decode_rle([o.mask])[0]
    assert decoded.shape == (H, W) and decoded[6:16, 5:25].all() and decoded.sum() == 200
    # Both records fit the output schemas.
    pa.Table.from_pylist([o.to_row()], schema=TRACK_SCHEMA)
    pa.Table.from_pylist([e.to_row() for e in events], schema=EVENT_SCHEMA)


def test_min_frames_and_min_seconds_need_a_continuous_streak():
    tracks = make(Rule("person", min_frames=3))
    published = [bool(frame(tracks, i, [obj(0)] if i != 2 else [])[0]) for i in range(7)]
    # Seen on 0, 1, gone on 2 (streak restarts), seen on 3, 4, 5 -> published from frame 5.
    assert published == [False, False, False, False, False, True, True]

    tracks = make(Rule("person", min_frames=2, min_seconds=0.5))
    starts = [e for i in range(10) for e in frame(tracks, i, [obj(0)])[1]]
    assert [(e.frame_index, e.details["first_frame_index"]) for e in starts] == [(5, 0)]  # 0.5 s after frame 0

    tracks = make(Rule("person", min_frames=3))
    low = [frame(tracks, i, [obj(0, score=0.9 if i != 2 else 0.1)])[1] for i in range(6)]
    assert [i for i, events in enumerate(low) if events] == [5]  # a low-score frame restarts the streak too


def test_tentative_frames_count_but_do_not_publish():
    tracks = make(Rule("person", min_frames=3))
    results = [frame(tracks, i, [obj(0, tentative=i < 4)]) for i in range(6)]
    assert [bool(obs) for obs, _ in results] == [False, False, False, False, True, True]
    tracks = make(Rule("person"), publish_tentative=True)
    assert frame(tracks, 0, [obj(0, tentative=True)])[0]


def test_zones_use_the_mask_centroid():
    left_half = [[0, 0], [40, 0], [40, 60], [0, 60]]
    tracks = make(Rule("person", zones=[left_half]))
    inside, outside = obj(0, box=(10, 10, 20, 20)), obj(1, box=(50, 10, 70, 20))
    # An L-shaped mask whose box centre (30, 30) is inside but whose centroid (44, 35) is not.
    l_mask = np.zeros((H, W), dtype=bool)
    l_mask[0:55, 54:60] = True
    l_mask[55:60, 0:60] = True
    l_shape = obj(2, box=(0, 0, 60, 60), mask=l_mask)
    observations, _ = frame(tracks, 0, [inside, outside, l_shape])
    assert [o.track_id for o in observations] == [0]
    # Anchored at the box centre instead, the L shape counts as inside.
    tracks = make(Rule("person", zones=[left_half]), zone_anchor="box_center")
    assert [o.track_id for o in frame(tracks, 0, [inside, outside, l_shape])[0]] == [0, 2]


def test_point_in_concave_polygon():
    u_shape = np.array([[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]], dtype=float)
    assert _inside(u_shape, 5, 20) and _inside(u_shape, 25, 20) and _inside(u_shape, 15, 5)
    assert not _inside(u_shape, 15, 20) and not _inside(u_shape, 35, 5) and not _inside(u_shape, 15, -1)


def test_start_and_end_events_with_duration_max_score_and_best_frame():
    tracks = make(end_after_frames=3)
    scores = {2: 0.7, 3: 0.8, 4: 0.95, 5: 0.6, 6: 0.95, 7: 0.9}
    log = []
    for i in range(13):
        # Frames 8-9 missing (shorter than end_after_frames: no end), frame 10 back, then gone.
        objects = [obj(4, score=scores.get(i, 0.7))] if 2 <= i <= 7 or i == 10 else []
        observations, events = frame(tracks, i, objects)
        log += [(i, e) for e in events]
        assert [o.track_id for o in observations] == ([4] if objects else [])
    assert [(i, e.type) for i, e in log] == [(2, "track_start")]
    _, events = frame(tracks, 13, [])
    (end,) = events
    assert (end.type, end.track_id, end.concept, end.frame_index) == ("track_end", 4, "person", 10)
    assert end.pts_s == pytest.approx(1.0) and end.duration_s == pytest.approx(0.8)
    assert end.max_score == pytest.approx(0.95) and end.best_frame_index == 4  # first frame with the max
    assert end.details == {"reason": "lost", "decided_frame_index": 13, "observations": 7}
    assert tracks.live_ids(published_only=False) == []


def test_published_track_that_stops_qualifying_ends_and_a_return_gets_a_new_id():
    tracks = make(end_after_frames=2)
    assert frame(tracks, 0, [obj(0)])[1][0].type == "track_start"
    assert frame(tracks, 1, [obj(0, score=0.1)]) == ([], [])  # present, not published, not yet ended
    _, events = frame(tracks, 2, [obj(0, score=0.1)])
    assert [(e.type, e.track_id, e.frame_index) for e in events] == [("track_end", 0, 0)]
    observations, events = frame(tracks, 3, [obj(0)])
    assert [(e.type, e.track_id) for e in events] == [("track_start", 1)] and observations[0].track_id == 1


def test_retraction_before_publication_publishes_nothing():
    tracks = make(Rule("person", min_frames=3))
    outputs = [frame(tracks, i, [obj(0, tentative=True)]) for i in range(4)]
    outputs.append(frame(tracks, 4, [], retracted=[0]))
    outputs += [frame(tracks, i, []) for i in range(5, 40)]
    assert all(o == ([], []) for o in outputs)
    assert tracks.live_ids(published_only=False) == [] and tracks.close(40, 4.0) == []


def test_retraction_after_publication_ends_the_track_at_once():
    tracks = make(publish_tentative=True)
    frame(tracks, 0, [obj(0, tentative=True)])
    _, events = frame(tracks, 1, [obj(1)], retracted=[0])
    assert [(e.type, e.track_id) for e in events] == [("track_end", 0), ("track_start", 1)]
    assert events[0].details["reason"] == "retracted" and events[0].frame_index == 0


def test_close_ends_live_tracks_and_clears_the_table():
    tracks = make(Rule("person"), Rule("car", threshold=0.8))
    frame(tracks, 0, [obj(0), obj(1, concept="car", score=0.5)])
    frame(tracks, 1, [obj(0, score=0.7), obj(1, concept="car", score=0.5)])
    events = tracks.close(1, 0.1, ts=T0)
    assert [(e.type, e.track_id, e.frame_index, e.details["reason"]) for e in events] == [("track_end", 0, 1, "stream_end")]
    assert events[0].max_score == pytest.approx(0.9) and events[0].best_frame_index == 0
    assert tracks.live_ids(published_only=False) == []


def _scenario() -> list[str]:
    tracks = make(Rule("person"), Rule("car", min_frames=2), end_after_frames=2)
    events = [tracks.stream_start(0, T0)]
    for i in range(8):
        objects = [obj(0)] if i < 3 else []
        objects += [obj(1, concept="car")] if i >= 2 else []
        objects += [obj(2, tentative=i < 5)] if i >= 4 else []
        events += frame(tracks, i, objects)[1]
        if i == 5:
            events.append(tracks.stream_reconnect(i + 1, T0, attempt=2, error="EOF", downtime_s=1.5))
    events += tracks.close(8, 0.8)
    events.append(tracks.stream_end(8, T0))
    return [e.event_id for e in events]


def test_event_ids_are_deterministic_and_unique():
    first, second = _scenario(), _scenario()
    assert first == second
    assert len(first) == len(set(first)) == 9  # stream start, reconnect and end; 3 track starts, 3 ends


def test_stream_events():
    tracks = make()
    error = tracks.stream_error(7, T0, ValueError("decode failed"), pts_s=0.7)
    assert (error.type, error.frame_index, error.error, error.track_id) == ("stream_error", 7, "decode failed", None)
    reconnect = tracks.stream_reconnect(3, T0, attempt=2, error=None, downtime_s=4.0)
    assert reconnect.details == {"attempt": 2, "downtime_s": 4.0}
    start = tracks.stream_start(0, T0)
    assert start.details == {"source": "rtsp://cam/1", "model": "facebook/sam3"}
    pa.Table.from_pylist([e.to_row() for e in (error, reconnect, start)], schema=EVENT_SCHEMA)
    assert start.event_id != tracks.stream_start(1, T0).event_id


def test_engine_ids_keep_their_number_until_it_was_issued():
    tracks = make()
    assert [o.track_id for o in frame(tracks, 0, [obj(7)])[0]] == [7]
    assert [o.track_id for o in frame(tracks, 1, [obj(7), obj(3)])[0]] == [7, 8]
    assert tracks.next_id == 9 and tracks.durable_id(3) == 8


def test_relink_keeps_durable_ids_after_an_engine_restart():
    tracks = make(end_after_frames=3)
    frame(tracks, 0, [obj(0, score=0.7), obj(1, score=0.95)])
    frame(tracks, 1, [obj(0, score=0.7), obj(1, score=0.8)])
    # The engine restarts: its new session calls the old object 1 "5"; old object 0 is not found again,
    # and the new session reuses engine id 0 for a different object.
    tracks.relink({5: 1})
    observations, events = frame(tracks, 2, [obj(5, score=0.9), obj(0, score=0.9)])
    assert [o.track_id for o in observations] == [1, 2]  # id 0 is never reused for the newcomer
    assert [(e.type, e.track_id) for e in events] == [("track_start", 2)]  # no restart of track 1
    frame(tracks, 3, [obj(5), obj(0)])
    _, events = frame(tracks, 4, [obj(5), obj(0)])
    assert [(e.type, e.track_id, e.frame_index) for e in events] == [("track_end", 0, 1)]  # old 0: lost
    end = tracks.close(5, 0.5)
    by_id = {e.track_id: e for e in end}
    assert by_id[1].duration_s == pytest.approx(0.4) and by_id[1].best_frame_index == 0  # history kept
    with pytest.raises(ValueError, match="never issued"):
        tracks.relink({1: 99})
    with pytest.raises(ValueError, match="same durable id"):
        tracks.relink({1: 0, 2: 0})


def test_relink_before_the_object_reappears():
    tracks = make(end_after_frames=50)
    frame(tracks, 0, [obj(3)])
    tracks.relink({0: 3})
    assert tracks.durable_id(0) == 3
    observations, events = frame(tracks, 1, [obj(0)])
    assert [o.track_id for o in observations] == [3] and events == []


def test_state_dict_round_trip_continues_the_table_in_a_new_stream_instance():
    import json

    tracks = make(Rule("person", min_frames=2), end_after_frames=3)
    frame(tracks, 0, [obj(4, score=0.95), obj(6)])
    frame(tracks, 1, [obj(4, score=0.7), obj(6)])
    frame(tracks, 2, [obj(9)])  # a candidate, not yet published
    state = json.loads(json.dumps(tracks.state_dict()))  # what a checkpoint file holds

    restored = make(Rule("person", min_frames=2), end_after_frames=3)
    restored.load_state_dict(state)
    assert restored.next_id == tracks.next_id == 10
    assert restored.live_ids() == [4, 6] and restored.live_ids(published_only=False) == [4, 6, 9]
    assert restored.durable_id(4) is None  # engine ids belong to the old session
    restored.relink({0: 4})  # the new session re-acquires 4 only; unpublished candidate 9 is dropped
    observations, events = frame(restored, 3, [obj(0, score=0.8), obj(1)])
    assert [o.track_id for o in observations] == [4] and events == []  # 4 continues; newcomer needs 2 frames
    observations, _ = frame(restored, 4, [obj(0), obj(1)])
    assert [o.track_id for o in observations] == [4, 10]  # no id issued before the checkpoint is reused
    end = {e.track_id: e for e in restored.close(5, 0.5)}
    # history survived: published at frame 1, observed on frames 1, 3 and 4, best on 4
    assert end[4].duration_s == pytest.approx(0.3) and end[4].details["observations"] == 3
    assert end[4].max_score == pytest.approx(0.9) and end[4].best_frame_index == 4
    with pytest.raises(ValueError, match="own resume point"):
        StreamTracks("job1", "cam2", "x", "m", [Rule("person")]).load_state_dict(state)


def test_the_table_remembers_last_boxes_and_relinks_a_new_session_by_them():
    tracks = make(end_after_frames=5)
    frame(tracks, 0, [obj(0, box=(10, 10, 20, 30)), obj(1, box=(40, 10, 50, 30))])
    frame(tracks, 1, [obj(0, box=(12, 10, 22, 30)), obj(1, box=(40, 10, 50, 30), score=0.1)])  # 1 below threshold
    frame(tracks, 2, [obj(0, box=(14, 10, 24, 30)), obj(5, concept="dog", box=(60, 10, 70, 30))])  # 1 absent
    # the last box where the engine saw each track, qualifying or not; concepts off the watchlist are not kept
    assert tracks.last_boxes() == {0: ("person", (14.0, 10.0, 24.0, 30.0)), 1: ("person", (40.0, 10.0, 50.0, 30.0))}
    # a new engine session numbers the same objects afresh; a box overlapping nothing is a newcomer
    fresh = [obj(7, box=(41, 10, 51, 30)), obj(8, box=(15, 10, 25, 30)), obj(9, box=(70, 40, 78, 58))]
    assert tracks.relink_by_boxes(fresh) == {7: 1, 8: 0}
    observations, events = frame(tracks, 3, fresh)
    assert [o.track_id for o in observations] == [1, 0, 9] and [e.track_id for e in events] == [9]


def test_relink_memory_survives_the_state_dict_round_trip():
    import json

    from operators.resume_point import ResumePoint

    tracks = make(Rule("person", min_frames=2), end_after_frames=5)
    frame(tracks, 0, [obj(4, box=(10, 10, 20, 30)), obj(6, box=(40, 10, 50, 30))])
    frame(tracks, 1, [obj(4, box=(12, 10, 22, 30)), obj(6, box=(42, 10, 52, 30))])
    frame(tracks, 2, [obj(9, box=(60, 30, 70, 50))])  # an unpublished candidate is remembered too
    state = json.loads(json.dumps(tracks.state_dict()))  # what a resume point file holds
    restored = make(Rule("person", min_frames=2), end_after_frames=5)
    restored.load_state_dict(state)
    assert restored.last_boxes() == tracks.last_boxes()
    assert set(restored.last_boxes()) == {4, 6, 9}
    fresh = [obj(0, box=(43, 10, 53, 30)), obj(1, box=(13, 10, 23, 30))]
    assert restored.relink_by_boxes(fresh) == {0: 6, 1: 4}
    assert [o.track_id for o in frame(restored, 3, fresh)[0]] == [6, 4]

    # the layout written before the table kept its boxes: they sat beside it in the resume point
    old = json.loads(json.dumps(tracks.state_dict()))
    boxes = {}
    for t in old["tracks"]:
        boxes[str(t["durable_id"])] = [t["concept"], t.pop("last_box")]
    old["version"] = 1
    text = json.dumps({"stream_id": "cam1", "frame_index": 2, "pts_s": 0.2, "tracks": old, "last_boxes": boxes})
    from_old = make(Rule("person", min_frames=2), end_after_frames=5)
    from_old.load_state_dict(ResumePoint.from_json(text).tracks)
    assert from_old.last_boxes() == tracks.last_boxes()
    assert from_old.relink_by_boxes(fresh) == {0: 6, 1: 4}


def test_state_is_bounded_by_live_objects():
    tracks = make(end_after_frames=2)
    for i in range(200):  # a new object every 5 frames, each visible for 3 frames
        objects = [obj(k) for k in range(max(0, i // 5 - 1), i // 5 + 1) if 5 * k <= i < 5 * k + 3]
        frame(tracks, i, objects)
    assert len(tracks.live_ids(published_only=False)) <= 1
    assert tracks.next_id == 40


def test_refused_frames_change_nothing():
    tracks = make(end_after_frames=1)
    frame(tracks, 0, [obj(0)])
    refused = FrameResult("cam1", 1, error="engine overloaded")
    assert tracks.update(refused, 0.1, T0) == ([], [])
    assert tracks.live_ids() == [0]


def test_rule_validation():
    with pytest.raises(ValueError, match="appears twice"):
        make(Rule("person"), Rule("person"))
    with pytest.raises(ValueError, match="zone 0"):
        make(Rule("person", zones=[[[0, 0], [1, 1]]]))
    with pytest.raises(ValueError, match="threshold"):
        make(Rule("person", threshold=1.5))
    # Any object with the attributes works; missing optional ones take defaults.
    tracks = make(SimpleNamespace(concept="person", threshold=0.2))
    assert frame(tracks, 0, [obj(0, score=0.3)])[0]


# -- live watchlist changes ---------------------------------------------------------------------


def test_removing_a_concept_ends_its_tracks_and_leaves_the_others_alone():
    tracks = make(Rule("person"), Rule("dog"))
    frame(tracks, 0, [obj(0), obj(1, concept="dog", box=(40, 10, 50, 30)), obj(2, score=0.1)])
    events = tracks.remove_rule("person", 1, T0)
    assert [(e.type, e.track_id, e.details["reason"], e.details["decided_frame_index"]) for e in events] == [
        ("track_end", 0, "concept_removed", 1)]
    assert tracks.live_ids(published_only=False) == [1]  # the unpublished person candidate went too
    observations, events = frame(tracks, 1, [obj(0), obj(1, concept="dog", box=(40, 10, 50, 30))])
    assert [(o.track_id, o.concept) for o in observations] == [(1, "dog")] and events == []
    with pytest.raises(KeyError, match="does not watch 'person'"):
        tracks.remove_rule("person", 2, T0)


def test_a_changed_rule_decides_from_the_next_frame_and_tracks_keep_their_ids():
    tracks = make(Rule("person", threshold=0.5))
    assert frame(tracks, 0, [obj(3, score=0.6)])[0]
    old = tracks.set_rule(Rule("person", threshold=0.7))
    assert old == WatchRule("person", 0.5)
    observations, _ = frame(tracks, 1, [obj(3, score=0.6)])
    assert observations == []  # 0.6 no longer qualifies
    observations, _ = frame(tracks, 2, [obj(3, score=0.8)])
    assert [o.track_id for o in observations] == [3]
    assert tracks.set_rule(Rule("dog", threshold=0.2)) is None  # a new concept is watched from now on
    observations, events = frame(tracks, 3, [obj(3, score=0.8), obj(4, concept="dog", score=0.3, box=(40, 10, 50, 30))])
    assert sorted(o.track_id for o in observations) == [3, 4] and [e.type for e in events] == ["track_start"]


def test_the_rules_in_force_travel_with_the_state():
    tracks = make(Rule("person"))
    tracks.set_rule(Rule("dog", threshold=0.25, zones=[[[0, 0], [10, 0], [10, 10]]]))
    state = tracks.state_dict()
    assert saved_rules(state) == [WatchRule("person"), WatchRule("dog", 0.25, zones=(((0, 0), (10, 0), (10, 10)),))]
    assert saved_rules({**state, "rules": None}) is None
