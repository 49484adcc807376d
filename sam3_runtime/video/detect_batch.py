"""``select_detections``: score thresholding and per-concept mask NMS of every session of a step at once.

The rules are ``heuristics.filter_detections``'s. The scores of every (session, concept) pair
come to the host in one read (a few hundred numbers); the host picks the candidates above each
session's threshold and their NMS order, and the device runs NMS for all pairs together for a
number of rounds fixed in advance, so it is never asked whether NMS has converged. Candidates
that NMS suppresses stay in the batch, flagged in ``valid``: ``plan_frames`` ignores them and
its one read tells the host which survived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sam3_runtime.host_reads import to_host
from sam3_runtime.masks import mask_iou
from sam3_runtime.video.memory import _to_device


@dataclass(frozen=True)
class DetectionBatch:
    """Candidate detections of a step: rows in (pair, query) order, pairs grouped by session."""

    masks: torch.Tensor  # [V, H, W] float mask logits (device)
    valid: torch.Tensor  # [V] bool (device): survived NMS
    scores: np.ndarray  # [V] float32 probabilities (host copy of the device values)
    prompt_ids: np.ndarray  # [V] int64 concept of each candidate
    session_counts: np.ndarray  # [S] candidates of each session
    pair_index: np.ndarray  # [V] int64 pair (row of the detector batch) of each candidate
    query_index: np.ndarray  # [V] int64 detector query of each candidate

    def session_rows(self, s: int) -> slice:
        start = int(self.session_counts[:s].sum())
        return slice(start, start + int(self.session_counts[s]))


def select_detections(
    pred_masks: torch.Tensor,
    scores: torch.Tensor,
    pair_session: np.ndarray,
    pair_prompt: np.ndarray,
    thresholds: np.ndarray,
    nms_thresholds: np.ndarray | None,
) -> DetectionBatch:
    """Candidates of ``P`` (session, concept) pairs: ``pred_masks [P, Q, H, W]`` logits and
    ``scores [P, Q]`` probabilities; ``pair_session [P]`` (ascending) and ``pair_prompt [P]`` name
    each pair; ``thresholds [S]`` are the sessions' ``score_threshold_detection``;
    ``nms_thresholds [S]`` their ``det_nms_thresh`` (None: no NMS). One host read.
    """
    num_sessions = thresholds.shape[0]
    (host_scores,) = to_host(scores.float())
    # compare in the scores' own dtype, as ``scores > threshold`` on the device would
    cut = torch.tensor(thresholds, dtype=scores.dtype).float().numpy()
    p_idx, q_idx = np.nonzero(host_scores > cut[pair_session][:, None])
    v = p_idx.size
    if v == 0:
        return DetectionBatch(
            masks=pred_masks.new_zeros(0, *pred_masks.shape[2:], dtype=torch.float32),
            valid=torch.zeros(0, dtype=torch.bool, device=pred_masks.device), scores=np.zeros(0, np.float32),
            prompt_ids=np.zeros(0, np.int64), session_counts=np.zeros(num_sessions, np.int64),
            pair_index=np.zeros(0, np.int64), query_index=np.zeros(0, np.int64),
        )
    v_scores = host_scores[p_idx, q_idx].astype(np.float32)
    index = _to_device(np.concatenate([p_idx, q_idx]).astype(np.int64), pred_masks.device).split(v)
    masks = pred_masks[index[0], index[1]].float()
    valid = torch.ones(v, dtype=torch.bool, device=masks.device)
    if nms_thresholds is not None:
        valid = _nms(masks, v_scores, p_idx, nms_thresholds[pair_session[p_idx]])
    return DetectionBatch(
        masks=masks, valid=valid, scores=v_scores, prompt_ids=pair_prompt[p_idx].astype(np.int64),
        session_counts=np.bincount(pair_session[p_idx], minlength=num_sessions).astype(np.int64),
        pair_index=p_idx.astype(np.int64), query_index=q_idx.astype(np.int64),
    )


def _nms(masks: torch.Tensor, scores: np.ndarray, group: np.ndarray, iou_threshold: np.ndarray) -> torch.Tensor:
    """Greedy mask NMS within each group (``[V]`` bool kept), all groups at once.

    Sorted by score (stable), detection j is kept iff no kept earlier detection of its group
    overlaps it by IoU > its threshold. Iterating ``keep <- not any(keep_i & S_ij)`` from "keep
    all" fixes the first ``r + 1`` detections of every group after ``r`` rounds, so the largest
    group's size minus one rounds reach the unique solution; the host knows that bound.
    """
    order = np.argsort(-scores, kind="stable")
    sizes = np.bincount(group)
    rounds = int(sizes.max()) - 1
    v = order.size
    host = np.concatenate([order, group[order]]).astype(np.int64)
    ordered, sorted_group = _to_device(host, masks.device).split(v)
    thr = _to_device(iou_threshold[order].astype(np.float32), masks.device)
    binary = masks.index_select(0, ordered) > 0
    earlier = torch.ones(v, v, dtype=torch.bool, device=masks.device).triu(1)
    same = sorted_group[:, None] == sorted_group[None, :]
    # thresholds <= 0 switch NMS off for that session
    can_suppress = (mask_iou(binary, binary) > thr[None, :]) & same & earlier & (thr[None, :] > 0)
    keep_sorted = torch.ones(v, dtype=torch.bool, device=masks.device)
    for _ in range(rounds):
        keep_sorted = ~(can_suppress & keep_sorted[:, None]).any(dim=0)
    return torch.zeros(v, dtype=torch.bool, device=masks.device).index_put((ordered,), keep_sorted)
