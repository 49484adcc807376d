"""TrackerSession and MaskletTable edits: rows, memory rows and ids stay aligned through every change."""

from __future__ import annotations

import io

import pytest
import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.memory import ObjectMemory
from sam3_runtime.video.planning import MaskletTable, plan_frame
from sam3_runtime.video.session import STATE_FORMAT, PromptedObject, TrackerSession

H = W = 32
BOXES = [(2, 2, 10, 10), (14, 2, 22, 10), (2, 14, 10, 22), (14, 14, 22, 22)]


def new_session(**kw) -> TrackerSession:
    memory = ObjectMemory(mem_dim=8, hidden_dim=16, feat_size=(2, 2), capacity=2, memory_dtype=torch.float32)
    return TrackerSession(stream_id="cam", memory=memory, **kw)


def box_logits(boxes) -> torch.Tensor:
    masks = torch.full((len(boxes), H, W), -8.0)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 8.0
    return masks


def detect(session: TrackerSession, dets: list[tuple[int, int]], tracks: dict[int, int | None], evict=None):
    """One planned frame: ``dets`` are (box index, prompt id); ``tracks`` maps each tracked id to its
    box index (None: empty mask). Returns the plan and what ``apply_plan`` gave back."""
    boxes = [tracks[i] for i in session.table.obj_ids.tolist()]
    trk = box_logits([BOXES[b] for b in boxes if b is not None])
    trk_masks = torch.full((len(boxes), H, W), -8.0)
    trk_masks[[i for i, b in enumerate(boxes) if b is not None]] = trk
    plan, table = plan_frame(
        session.table, session.frame_index, box_logits([BOXES[b] for b, _ in dets]),
        torch.full((len(dets),), 0.9), torch.tensor([p for _, p in dets], dtype=torch.long),
        trk_masks, torch.full((len(boxes),), 3.0), VideoConfig(), hotstart_mode="off", evict_after_frames=evict,
    )
    applied = session.apply_plan(plan, table)
    session.advance_frame()
    return plan, applied


def assert_aligned(session: TrackerSession) -> None:
    assert len(session.concept_rows) == len(session.table)
    assert len(session.prompted_rows) == len(session.prompted_ids)
    held = session.concept_rows + session.prompted_rows
    assert sorted(held) == session.memory.live_rows, "every live memory row belongs to exactly one object"


def two_concepts_four_objects() -> TrackerSession:
    session = new_session()
    cars, bikes = session.add_concept("car"), session.add_concept("bike")
    detect(session, [(0, cars), (1, bikes), (2, cars), (3, bikes)], {})
    return session


# -- MaskletTable ------------------------------------------------------------------------------------

def test_table_without_rows_drops_the_same_rows_of_every_field():
    session = two_concepts_four_objects()
    table = session.table
    table = MaskletTable(**{**table.__dict__, "dup_counts": torch.arange(16).reshape(4, 4)})
    smaller, keep = table.without_rows(torch.tensor([False, True, False, True]))
    assert keep.tolist() == [0, 2]
    assert smaller.obj_ids.tolist() == [0, 2] and smaller.prompt_ids.tolist() == [0, 0]
    assert smaller.dup_counts.tolist() == [[0, 2], [8, 10]]  # rows and columns both
    assert smaller.next_obj_id == table.next_obj_id == 4
    with pytest.raises(ValueError, match="does not match"):
        table.without_rows(torch.tensor([True, False]))


def test_table_allocates_ids_after_its_objects():
    table, first = MaskletTable.empty(next_obj_id=7).with_allocated_id()
    table, second = table.with_allocated_id()
    assert (first, second, table.next_obj_id, len(table)) == (7, 8, 9, 0)


# -- concepts ----------------------------------------------------------------------------------------

def test_concept_ids_are_stable_and_never_reused():
    session = new_session()
    assert session.add_concept(" car ") == 0 and session.add_concept("car") == 0
    assert session.add_concept("bike") == 1
    session.remove_concept("car")
    assert session.add_concept("car") == 2
    with pytest.raises(ValueError, match="empty concept"):
        session.add_concept("  ")
    with pytest.raises(ValueError, match="has no concept 'bus'"):
        session.remove_concept("bus")


def test_removing_a_concept_drops_exactly_its_objects_and_frees_their_memory():
    session = two_concepts_four_objects()
    rows = dict(zip(session.table.obj_ids.tolist(), session.concept_rows, strict=True))
    assert_aligned(session)
    assert session.remove_concept("car") == [0, 2]
    assert session.table.obj_ids.tolist() == [1, 3] and session.table.prompt_ids.tolist() == [1, 1]
    assert session.concept_rows == [rows[1], rows[3]]
    assert session.memory.live_rows == sorted([rows[1], rows[3]])
    assert session.concepts == {1: "bike"} and session.table.next_obj_id == 4
    assert_aligned(session)


# -- frames ------------------------------------------------------------------------------------------

def test_apply_plan_frees_dropped_rows_and_gives_new_objects_fresh_rows():
    session = two_concepts_four_objects()
    before = dict(zip(session.table.obj_ids.tolist(), session.concept_rows, strict=True))
    # object 1 comes back empty and is evicted at once; a new bike appears where it was
    plan, applied = detect(session, [(0, 0), (2, 0), (3, 1), (1, 1)], {0: 0, 1: None, 2: 2, 3: 3}, evict=1)
    assert plan.evicted_obj_ids.tolist() == [1] and plan.new_obj_ids.tolist() == [4]
    assert applied.kept_rows == [before[0], before[2], before[3]]
    assert applied.new_rows == [before[1]], "the freed row is the lowest free one, so the new object gets it"
    assert session.concept_rows == applied.kept_rows + applied.new_rows
    assert session.table.obj_ids.tolist() == [0, 2, 3, 4]
    assert_aligned(session)


def test_apply_plan_refuses_a_table_that_does_not_follow_the_plan():
    session = two_concepts_four_objects()
    plan, table = plan_frame(session.table, 1, torch.zeros(0, H, W), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                             box_logits(BOXES), torch.full((4,), 3.0), VideoConfig(), hotstart_mode="off")
    with pytest.raises(ValueError, match="does not follow"):
        session.apply_plan(plan, MaskletTable.empty())
    assert_aligned(session)


def test_frame_size_is_fixed_by_the_first_frame():
    session = new_session()
    session.accept_frame_size((120, 160))
    session.accept_frame_size((120, 160))
    with pytest.raises(ValueError, match="frame is 200x100 but the stream's frames are 160x120"):
        session.accept_frame_size((100, 200))
    assert session.frame_size == (120, 160)


# -- prompted objects --------------------------------------------------------------------------------

def start_all_pending(session: TrackerSession) -> list[int]:
    return [session.start_prompted(p.track_id) for p in session.take_pending()]


def test_prompted_objects_share_the_id_counter_and_start_from_the_queue():
    session = two_concepts_four_objects()
    a = session.queue_prompt(box_xyxy=(1.0, 2.0, 3.0, 4.0))
    b = session.queue_prompt(points=((5.0, 6.0),), point_labels=(1,))
    assert (a, b) == (4, 5)
    assert session.pending[1] == PromptedObject(track_id=5, points=((5.0, 6.0),), point_labels=(1,))
    rows = start_all_pending(session)
    assert session.pending == [] and session.take_pending() == []
    assert session.prompted_ids == [4, 5] and session.prompted_rows == rows
    assert session.num_objects == 6
    assert_aligned(session)


def test_removing_a_prompted_object_keeps_ids_and_rows_aligned():
    session = new_session()
    ids = [session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0)) for _ in range(3)]
    rows = start_all_pending(session)
    session.remove_object(ids[1])
    assert session.prompted_ids == [ids[0], ids[2]] and session.prompted_rows == [rows[0], rows[2]]
    assert session.memory.live_rows == sorted([rows[0], rows[2]])
    session.remove_object(12345)  # unknown: nothing happens
    assert session.prompted_ids == [ids[0], ids[2]]
    assert_aligned(session)


def test_remove_object_reaches_detected_and_queued_objects():
    session = two_concepts_four_objects()
    queued = session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0))
    kept = session.queue_prompt(box_xyxy=(1.0, 1.0, 4.0, 4.0))
    rows = dict(zip(session.table.obj_ids.tolist(), session.concept_rows, strict=True))
    session.remove_object(2)
    assert session.table.obj_ids.tolist() == [0, 1, 3] and rows[2] not in session.memory.live_rows
    session.remove_object(queued)
    assert [p.track_id for p in session.pending] == [kept]
    assert_aligned(session)


# -- reset and moving ----------------------------------------------------------------------------------

def test_reset_forgets_objects_but_keeps_concepts_and_the_id_counter():
    session = two_concepts_four_objects()
    session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0))
    start_all_pending(session)
    session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0))
    session.reset()
    assert len(session.table) == 0 and session.prompted_ids == [] and session.pending == []
    assert session.memory.live_rows == []
    assert session.concepts == {0: "car", 1: "bike"}
    assert session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0)) == 6  # 0-3 detected, 4 started, 5 queued
    assert_aligned(session)


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_state_dict_round_trip_keeps_every_field():
    session = two_concepts_four_objects()
    session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0))
    start_all_pending(session)
    session.queue_prompt(points=((1.0, 2.0), (3.0, 4.0)), point_labels=(1, 0))
    session.accept_frame_size((120, 160))
    state = saved_and_loaded(session.state_dict())
    assert state["format"] == STATE_FORMAT
    moved = TrackerSession.from_state_dict(state, torch.device("cpu"))
    for name in ("stream_id", "concepts", "next_prompt_id", "concept_rows", "prompted_ids", "prompted_rows",
                 "pending", "frame_index", "frame_size", "video"):
        assert getattr(moved, name) == getattr(session, name), name
    for name, value in session.table.__dict__.items():
        assert torch.equal(torch.as_tensor(getattr(moved.table, name)), torch.as_tensor(value)), name
    assert moved.memory.live_rows == session.memory.live_rows
    assert moved.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0)) == session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0))


def test_state_saved_in_format_1_still_loads():
    session = two_concepts_four_objects()
    session.queue_prompt(box_xyxy=(0.0, 0.0, 4.0, 4.0))
    start_all_pending(session)
    state = session.state_dict()
    state["format"] = 1
    state["box_ids"], state["box_rows"] = state.pop("prompted_ids"), state.pop("prompted_rows")
    moved = TrackerSession.from_state_dict(state, torch.device("cpu"))
    assert (moved.prompted_ids, moved.prompted_rows) == (session.prompted_ids, session.prompted_rows)
    state["format"] = 99
    with pytest.raises(ValueError, match="saved by another version"):
        TrackerSession.from_state_dict(state, torch.device("cpu"))


def test_pending_prompts_saved_as_lists_load_as_tuples():
    """A serializer without tuples (JSON, msgpack) writes prompts as lists; they must load as equal prompts."""
    session = new_session()
    session.queue_prompt(box_xyxy=(0.0, 1.0, 4.0, 5.0))
    session.queue_prompt(points=((1.0, 2.0), (3.0, 4.0)), point_labels=(1, 0))
    state = session.state_dict()
    state["pending"] = [{k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
                         for k, v in p.items()} for p in state["pending"]]
    assert state["pending"][1]["points"] == [[1.0, 2.0], [3.0, 4.0]]
    moved = TrackerSession.from_state_dict(state, torch.device("cpu"))
    assert moved.pending == session.pending
