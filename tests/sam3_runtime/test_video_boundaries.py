"""SAM 3's video rules at their thresholds: hot-start's last frame, IoU and score thresholds, keep-alive.

Each scenario is a script of hand-built detections and tracker masks, played through
``plan_frame`` and through transformers' planning phase side by side (decision by decision,
as in test_video_heuristics.py), and checked against the frame SAM 3's rules give by hand.
Scores and IoUs are chosen to land exactly on a threshold: IoUs are ratios of small pixel
counts (exact in fp32), scores are the fp32 value of the threshold itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.video.heuristics import associate
from sam3_runtime.video.planning import MaskletTable, plan_frame
from tests.sam3_runtime.test_video_heuristics import (
    BOX_A,
    BOX_B,
    ReferenceStream,
    assert_table_matches_session,
    configure,
    masks_of,
)

# A small hot-start so that scenarios stay short; every other rule at its default.
HOTSTART = VideoConfig(hotstart_delay=6, hotstart_unmatch_thresh=3, hotstart_dup_thresh=3)
BORN = 2  # frame on which the scenarios' objects start: the rules count from it, not from frame 0

Dets = list[tuple[tuple[int, int, int, int], float]]
Tracks = Callable[[int, int], tuple[int, int, int, int] | None]  # (frame, obj id) -> box, None = empty mask


@dataclasses.dataclass
class Played:
    removed_at: dict[int, int]  # obj id -> frame it was retracted on
    hidden_on: dict[int, list[int]]  # obj id -> frames it was hidden on (keep-alive)
    table: MaskletTable


def play(hf_model, monkeypatch, cfg: VideoConfig, script: list[tuple[Dets, Tracks]], mode: str) -> Played:
    """Run ``script`` (one (detections, tracks) per frame, concept 0) through both implementations."""
    configure(monkeypatch, hf_model, cfg)
    ref = ReferenceStream(hf_model, monkeypatch, streaming=mode == "off")
    table = MaskletTable.empty()
    played = Played({}, {}, table)
    for frame_idx, (dets, tracks) in enumerate(script):
        ids = table.obj_ids.tolist()
        trk_masks = masks_of([tracks(frame_idx, i) or (0, 0, 0, 0) for i in ids])
        trk_scores = torch.full((len(ids),), 3.0)
        det_masks = masks_of([b for b, _ in dets])
        det_scores = torch.tensor([s for _, s in dets], dtype=torch.float32)
        det_prompts = torch.zeros(len(dets), dtype=torch.long)
        hf_plan, _, hf_out, _ = ref.step(frame_idx, det_masks, det_scores, det_prompts, trk_masks, trk_scores)
        plan, table = plan_frame(table, frame_idx, det_masks, det_scores, det_prompts, trk_masks, trk_scores, cfg,
                                 hotstart_mode=mode)
        assert plan.new_obj_ids.tolist() == hf_plan["new_det_obj_ids"], frame_idx
        assert set(plan.removed_obj_ids.tolist()) == hf_plan["obj_ids_newly_removed"], frame_idx
        assert set(plan.hidden_obj_ids.tolist()) == ref.session.suppressed_obj_ids[frame_idx], frame_idx
        assert plan.out_obj_ids.tolist() == sorted(hf_out), frame_idx
        assert_table_matches_session(table, ref.session)
        played.removed_at.update({i: frame_idx for i in plan.removed_obj_ids.tolist()})
        for i in plan.hidden_obj_ids.tolist():
            played.hidden_on.setdefault(i, []).append(frame_idx)
    played.table = table
    return played


def last_removable_frame(cfg: VideoConfig, born: int) -> int:
    """An object is young while ``frame - born < hotstart_delay``: its delay-th frame is its last chance."""
    return born + cfg.hotstart_delay - 1


# -- hot-start: the unmatched rule at the delay's edge ------------------------------------------------

@pytest.mark.parametrize("mode", ["tentative", "off"])
@pytest.mark.parametrize("reach", [-2, -1, 0, 1], ids=["two-early", "one-early", "last-frame", "one-late"])
def test_unmatched_count_reaching_the_threshold_around_the_last_removable_frame(hf_model, monkeypatch, mode, reach):
    cfg = HOTSTART
    last = last_removable_frame(cfg, BORN)
    reach_frame = last + reach  # reach 0: the count reaches the threshold on the last removable frame
    unmatched = set(range(reach_frame - cfg.hotstart_unmatch_thresh + 1, reach_frame + 1))
    assert min(unmatched) > BORN
    # object 0 (box A) misses its detection on ``unmatched``; object 1 (box B) is always matched
    script = [([], lambda f, i: None)] * BORN + [
        (([] if f in unmatched else [(BOX_A, 0.9)]) + [(BOX_B, 0.9)], lambda f, i: BOX_B if i == 1 else BOX_A)
        for f in range(BORN, last + 6)
    ]
    played = play(hf_model, monkeypatch, cfg, script, mode)
    retracted = mode == "tentative" and reach_frame <= last
    assert played.removed_at == ({0: reach_frame} if retracted else {})
    survivors = played.table.obj_ids.tolist()
    if retracted:
        # box A is detected again after the retraction and starts a new object; id 0 is never reused
        assert 0 not in survivors and 1 in survivors and max(survivors) == 2
    else:
        assert survivors == [0, 1]
        assert int(played.table.unmatched_frames[0]) == cfg.hotstart_unmatch_thresh


# -- hot-start: the duplicate rule at the delay's edge ------------------------------------------------

@pytest.mark.parametrize("mode", ["tentative", "off"])
@pytest.mark.parametrize("reach", [-1, 0, 1], ids=["one-early", "last-frame", "one-late"])
def test_duplicate_count_reaching_the_threshold_around_the_last_removable_frame(hf_model, monkeypatch, mode, reach):
    cfg = HOTSTART
    last = last_removable_frame(cfg, BORN)
    reach_frame = last + reach
    shared = set(range(reach_frame - cfg.hotstart_dup_thresh + 1, reach_frame + 1))
    assert min(shared) > BORN

    def tracks(f, i):  # on shared frames both tracks sit on box A; otherwise object 1 follows box B
        return BOX_A if i == 0 or f in shared else BOX_B

    script = [([], tracks)] * BORN + [
        ([(BOX_A, 0.9)] if f in shared else [(BOX_A, 0.9), (BOX_B, 0.9)], tracks) for f in range(BORN, last + 6)
    ]
    played = play(hf_model, monkeypatch, cfg, script, mode)
    retracted = mode == "tentative" and reach_frame <= last
    # both start on the same frame: the higher row (id 1) counts as the duplicate of id 0
    assert played.removed_at == ({1: reach_frame} if retracted else {})
    if not retracted:
        assert played.table.obj_ids.tolist() == [0, 1]
        assert played.table.dup_counts.tolist() == [[0, cfg.hotstart_dup_thresh], [0, 0]]


# -- association and new objects at their thresholds --------------------------------------------------

TRACK = (0, 0, 10, 10)  # 100 pixels; a detection inside it has IoU = its area / 100


@pytest.mark.parametrize(
    "det_box,matched,trk_matched",
    [
        ((0, 0, 10, 1), True, False),  # IoU 0.10 = assoc_iou_thresh: associated
        ((0, 0, 9, 1), False, False),  # IoU 0.09: not associated, a new object
        ((0, 0, 10, 5), True, True),  # IoU 0.50 = trk_assoc_iou_thresh: the track counts as matched
        ((0, 0, 7, 7), True, False),  # IoU 0.49: associated, yet the track counts as unmatched
    ],
)
def test_association_at_exactly_the_iou_thresholds(hf_model, monkeypatch, det_box, matched, trk_matched):
    cfg = VideoConfig()
    configure(monkeypatch, hf_model, cfg)
    det_masks, trk_masks = masks_of([det_box]), masks_of([TRACK])
    scores = torch.tensor([0.9])
    prompts = torch.zeros(1, dtype=torch.long)
    ours = associate(det_masks, scores, prompts, trk_masks, prompts, cfg)
    new, unmatched, det_to_trk, _, _ = hf_model._associate_det_trk(det_masks, scores, trk_masks, [7], prompts, prompts)
    assert ours.matched.tolist() == [[matched]] and det_to_trk == {0: [7] if matched else []}
    assert ours.is_new.tolist() == [not matched] and new == ([] if matched else [0])
    assert ours.trk_unmatched.tolist() == [not trk_matched] and unmatched == ([] if trk_matched else [7])


@pytest.mark.parametrize("below", [False, True], ids=["at", "below"])
def test_new_object_at_exactly_new_det_thresh(hf_model, monkeypatch, below):
    cfg = VideoConfig()
    configure(monkeypatch, hf_model, cfg)
    score = torch.tensor(cfg.new_det_thresh, dtype=torch.float32)
    if below:
        score = torch.nextafter(score, torch.tensor(0.0))
    # a tracked object elsewhere: with nothing tracked every detection would start an object
    det_masks, trk_masks = masks_of([BOX_B]), masks_of([BOX_A])
    prompts = torch.zeros(1, dtype=torch.long)
    ours = associate(det_masks, score[None], prompts, trk_masks, prompts, cfg)
    new, *_ = hf_model._associate_det_trk(det_masks, score[None], trk_masks, [0], prompts, prompts)
    assert ours.is_new.tolist() == [not below] and new == ([] if below else [0])


# -- keep-alive: hidden exactly when the counter runs out ---------------------------------------------

def test_keep_alive_expires_exactly_at_its_count(hf_model, monkeypatch):
    # unmatched frames only lower keep-alive here (the unmatched rule is out of reach)
    cfg = dataclasses.replace(
        HOTSTART, hotstart_unmatch_thresh=100, suppress_unmatched_only_within_hotstart=False,
        init_trk_keep_alive=3, max_trk_keep_alive=3, min_trk_keep_alive=-1,
    )
    unmatched = set(range(BORN + 1, BORN + 6))  # five misses, then matched again
    script = [([], lambda f, i: None)] * BORN + [
        ([] if f in unmatched else [(BOX_A, 0.9)], lambda f, i: BOX_A) for f in range(BORN, BORN + 10)
    ]
    played = play(hf_model, monkeypatch, cfg, script, "tentative")
    # keep-alive 3 at birth, one less per miss: 2, 1, 0 (hidden), -1, -1 (clamped), then +1 per
    # match: 0 (still hidden), 1 (shown again)
    expected = [BORN + 3, BORN + 4, BORN + 5, BORN + 6]
    assert played.removed_at == {} and played.hidden_on == {0: expected}
    assert played.table.keep_alive.tolist() == [3]
