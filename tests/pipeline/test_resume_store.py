"""Stream resume points as the driver keeps them: JSON round trip, atomic files, the older layout, clear errors."""

from __future__ import annotations

import json

import pytest

from operators.resume_point import ResumePoint, StreamState
from pipeline.resume_store import ResumeStore


def resume_point(frame_index: int, stream_id: str = "cam/1", state: StreamState = StreamState.RUNNING) -> ResumePoint:
    tracks = {"version": 2, "stream_id": stream_id, "next_id": 4,
              "tracks": [{"durable_id": 3, "concept": "person", "published": True, "max_score": None,
                          "last_box": [1.0, 2.0, 3.0, 4.0]}]}
    return ResumePoint(stream_id, frame_index, frame_index / 10, tracks, counters={"frames_processed": frame_index + 1},
                       sink_sequence={"tracks": 2, "events": 1}, run_id="ab12cd", state=state)


def test_round_trip_through_json():
    original = resume_point(7, state=StreamState.STOPPED)
    assert ResumePoint.from_json(original.to_json()) == original
    assert json.loads(original.to_json())["state"] == "stopped"  # files hold the plain state name


def test_store_writes_the_latest_resume_point_and_a_later_store_reads_it(tmp_path):
    store = ResumeStore(tmp_path / "points")
    store.put(resume_point(3))
    store.put(resume_point(9))
    assert [p.name for p in (tmp_path / "points").iterdir()] == ["cam%2F1.json"]  # one file, no temporaries left
    assert ResumeStore(tmp_path / "points").load("cam/1") == resume_point(9)
    assert ResumeStore(tmp_path / "points").load("other") is None
    memory_only = ResumeStore(None)
    memory_only.put(resume_point(1))
    assert memory_only.get("cam/1") == resume_point(1) and memory_only.load("cam/1") is None


def test_a_file_of_the_older_layout_loads_with_its_last_boxes_in_the_track_table(tmp_path):
    # written before the track table kept its own last boxes: they sat beside it, keyed by durable id
    old = {"stream_id": "cam", "frame_index": 5, "pts_s": 0.5,
           "tracks": {"version": 1, "stream_id": "cam", "next_id": 8,
                      "tracks": [{"durable_id": 3, "concept": "person", "published": True, "max_score": 0.9},
                                 {"durable_id": 7, "concept": "person", "published": False, "max_score": None}]},
           "last_boxes": {"3": ["person", [1.0, 2.0, 3.0, 4.0]]},
           "counters": {"frames_processed": 6}, "sink_sequence": {"tracks": 1}, "run_id": "ab12cd", "state": "finished"}
    (tmp_path / "cam.json").write_text(json.dumps(old))
    point = ResumeStore(tmp_path).load("cam")
    assert point.state is StreamState.FINISHED and point.frame_index == 5 and point.run_id == "ab12cd"
    assert [(t["durable_id"], t["last_box"]) for t in point.tracks["tracks"]] == [(3, [1.0, 2.0, 3.0, 4.0]), (7, None)]


def test_a_damaged_resume_point_file_says_how_to_go_on(tmp_path):
    (tmp_path / "cam.json").write_text('{"stream_id": "cam", "frame_ind')
    with pytest.raises(ValueError, match="delete it to start the stream from its beginning"):
        ResumeStore(tmp_path).load("cam")
