"""Stream checkpoints as the driver keeps them: JSON round trip, atomic files, clear errors."""

from __future__ import annotations

import pytest

from operators.stream_checkpoint import StreamCheckpoint
from pipeline.checkpoints import CheckpointStore


def checkpoint(frame_index: int, stream_id: str = "cam/1") -> StreamCheckpoint:
    tracks = {"version": 1, "stream_id": stream_id, "next_id": 4,
              "tracks": [{"durable_id": 3, "concept": "person", "published": True, "max_score": None}]}
    return StreamCheckpoint(stream_id, frame_index, frame_index / 10, tracks, {3: ("person", (1.0, 2.0, 3.0, 4.0))},
                            counters={"frames_processed": frame_index + 1}, sink_sequence={"tracks": 2, "events": 1},
                            run_id="ab12cd")


def test_round_trip_through_json():
    original = checkpoint(7)
    assert StreamCheckpoint.from_json(original.to_json()) == original


def test_store_writes_the_latest_checkpoint_and_a_later_store_reads_it(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    store.put(checkpoint(3))
    store.put(checkpoint(9))
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["cam%2F1.json"]  # one file, no temporaries left
    assert CheckpointStore(tmp_path / "ckpt").load("cam/1") == checkpoint(9)
    assert CheckpointStore(tmp_path / "ckpt").load("other") is None
    memory_only = CheckpointStore(None)
    memory_only.put(checkpoint(1))
    assert memory_only.get("cam/1") == checkpoint(1) and memory_only.load("cam/1") is None


def test_a_damaged_checkpoint_file_says_how_to_go_on(tmp_path):
    (tmp_path / "cam.json").write_text('{"stream_id": "cam", "frame_ind')
    with pytest.raises(ValueError, match="delete it to start the stream from its beginning"):
        CheckpointStore(tmp_path).load("cam")
