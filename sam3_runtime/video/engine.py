"""The streaming engine: many streams, one batched SAM 3 step per round of frames.

``StreamingEngine.step`` takes at most one new frame for each of several sessions and runs:
the backbone once per frame (one batch), the detector once per (frame, concept) pair (one
batch, text features cached per concept), the tracker once for every object of every session
(one batch, each object conditioned on its own stream's bounded memory), then SAM 3's video
logic per session (``plan_frame``), and finally the memory encoder for all objects (batched).
Frames arrive one at a time; nothing depends on a video's length.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sam3_runtime.config import VideoConfig
from sam3_runtime.host_reads import to_host
from sam3_runtime.model import LoadedModel
from sam3_runtime.preprocess import FrameStaging, to_model_input
from sam3_runtime.video.detect_batch import DetectionBatch, select_detections
from sam3_runtime.video.memory import ObjectMemory, _to_device
from sam3_runtime.video.plan_batch import BatchPlan, SessionFrame, plan_frames, shared_settings
from sam3_runtime.video.plan_types import FramePlan
from sam3_runtime.video.propagation import (
    TrackerFrameFeatures,
    add_objects_from_masks,
    commit_memories,
    propagate,
    tracker_features,
)
from sam3_runtime.video.render import PendingResult, RenderItem, render_step
from sam3_runtime.video.session import AppliedPlan, PromptedObject, TrackerSession
from sam3_runtime.video.tracked import TrackedBatch
from sam3_runtime.video.types import PROMPTED_CONCEPT, EngineOptions, FrameResult

logger = logging.getLogger(__name__)


class SessionError(ValueError):
    """A request names a session that does not exist or cannot take it."""


class StreamingEngine:
    """Owns the model and the tracker sessions of the streams placed on it."""

    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None, video: VideoConfig | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.options = options or EngineOptions()
        self.video = video or loaded.config.video
        self._sessions: dict[str, TrackerSession] = {}
        self._staging = FrameStaging(self.device)  # pinned upload buffer on CUDA, reused every step

    # -- sessions ---------------------------------------------------------------------------
    def open_session(self, stream_id: str, concepts: Sequence[str] = (), detection_threshold: float | None = None) -> None:
        """Open a stream's session. ``detection_threshold`` overrides the checkpoint's for this stream
        (the new-object threshold keeps its ratio to it: 0.5 -> 0.7 becomes 0.25 -> 0.35)."""
        if stream_id in self._sessions:
            raise SessionError(f"session {stream_id!r} is already open: close it first or use another stream id")
        video = with_detection_threshold(self.video, detection_threshold) if detection_threshold is not None else None
        memory = ObjectMemory.for_model(self.model, device=self.device)
        self._sessions[stream_id] = TrackerSession(stream_id=stream_id, memory=memory, video=video)
        for c in concepts:
            self.add_concept(stream_id, c)

    def close_session(self, stream_id: str) -> None:
        self._session(stream_id)
        del self._sessions[stream_id]

    def reset_session(self, stream_id: str) -> None:
        self._session(stream_id).reset()

    @property
    def stream_ids(self) -> list[str]:
        return list(self._sessions)

    def session(self, stream_id: str) -> TrackerSession:
        return self._session(stream_id)

    def export_session(self, stream_id: str) -> dict:
        """The session's whole state on the CPU, for ``import_session`` on another engine."""
        return self._session(stream_id).state_dict()

    def import_session(self, state: dict) -> str:
        session = TrackerSession.from_state_dict(state, self.device)
        if session.stream_id in self._sessions:
            raise SessionError(f"session {session.stream_id!r} is already open on this engine")
        self._sessions[session.stream_id] = session
        return session.stream_id

    def add_concept(self, stream_id: str, concept: str) -> int:
        """Start detecting ``concept`` on the stream; other tracks keep their ids. Returns its prompt id."""
        return self._session(stream_id).add_concept(concept)

    def remove_concept(self, stream_id: str, concept: str) -> list[int]:
        """Stop detecting ``concept`` and drop its tracks; returns the removed track ids."""
        return self._session(stream_id).remove_concept(concept)

    def add_box(self, stream_id: str, box_xyxy: Sequence[float]) -> int:
        """Track the object in ``box_xyxy`` (pixels) from the stream's next frame on; returns its track id."""
        box = tuple(float(v) for v in box_xyxy)
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"box {list(box)} has no area: give x0, y0, x1, y1 with x1 > x0 and y1 > y0")
        return self._session(stream_id).queue_prompt(box_xyxy=box)

    def add_points(self, stream_id: str, points: Sequence[Sequence[float]], labels: Sequence[int]) -> int:
        """Track the object clicked at ``points`` (pixels; label 1 on it, 0 off it) from the next frame on."""
        pts = tuple((float(x), float(y)) for x, y in points)
        if not pts or len(pts) != len(labels) or any(lb not in (0, 1) for lb in labels):
            raise ValueError("give one or more points with one label each: 1 = on the object, 0 = background")
        return self._session(stream_id).queue_prompt(points=pts, point_labels=tuple(int(v) for v in labels))

    def remove_object(self, stream_id: str, track_id: int) -> None:
        """Stop tracking one object (prompted, detected or still queued); an unknown id is ignored."""
        self._session(stream_id).remove_object(track_id)

    def _session(self, stream_id: str) -> TrackerSession:
        try:
            return self._sessions[stream_id]
        except KeyError:
            raise SessionError(f"no open session {stream_id!r}: open it with open_session() first") from None

    # -- the step ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, frames: Mapping[str, np.ndarray]) -> dict[str, FrameResult]:
        """Advance each named session by one frame (uint8 RGB ``[H, W, 3]``).

        A frame that cannot be taken (unknown session, wrong shape) gets a result with
        ``error`` set; the other sessions' frames are processed as usual.
        """
        results: dict[str, FrameResult] = {}
        batch: list[tuple[TrackerSession, np.ndarray]] = []
        for stream_id, frame in frames.items():
            try:
                session = self._session(stream_id)
                _check_frame(session, frame)
            except ValueError as e:
                index = self._sessions[stream_id].frame_index if stream_id in self._sessions else -1
                results[stream_id] = FrameResult(stream_id, index, error=str(e))
                logger.warning("%s", e)
                continue
            batch.append((session, frame))
        if batch:
            results.update(self._step(batch))
        return results

    def _step(self, batch: list[tuple[TrackerSession, np.ndarray]]) -> dict[str, FrameResult]:
        sessions = [s for s, _ in batch]
        pixels = to_model_input([f for _, f in batch], self.loaded.config.image_size, self.device, self.loaded.dtype,
                                staging=self._staging)
        vision = self.model.detector_model.encode_image(pixels)
        detections = self._detect(vision, sessions)
        feats = tracker_features(self.model, vision.backbone_features)
        tracked = self._propagate(feats, sessions)
        groups = self._plan(sessions, detections, tracked)
        plans: list[FramePlan] = [None] * len(sessions)  # type: ignore[list-item]
        applied: list[AppliedPlan] = [None] * len(sessions)  # type: ignore[list-item]
        for members, bp in groups:
            for f, plan, table in zip(members, bp.plans, bp.tables, strict=True):
                plans[f], applied[f] = plan, sessions[f].apply_plan(plan, table)

        self._commit_tracked(feats, sessions, groups, applied, tracked)
        self._start_detected(feats, sessions, groups, applied, detections)
        prompted = self._start_prompted(feats, sessions)
        tracked = tracked.per_session()

        outputs = [self._output(session, frame, plans[f], tracked[f], prompted[f])
                   for f, (session, frame) in enumerate(batch)]
        rendered = render_step([item for _, item in outputs], self.options.non_overlapping)
        results = {}
        for (session, _), (out, _), masks in zip(batch, outputs, rendered, strict=True):
            results[session.stream_id] = out.result_with(masks)
            session.advance_frame()
        return results

    def _detect(self, vision, sessions: list[TrackerSession]) -> DetectionBatch:
        """Candidate detections of every concept of every session's frame: one detector batch, one host read."""
        texts = sorted({t for s in sessions for t in s.concepts.values()})
        cfgs = [s.video or self.video for s in sessions]
        if not texts:
            return DetectionBatch(
                masks=torch.zeros(0, *self._mask_size(), device=self.device),
                valid=torch.zeros(0, dtype=torch.bool, device=self.device), scores=np.zeros(0, np.float32),
                prompt_ids=np.zeros(0, np.int64), session_counts=np.zeros(len(sessions), np.int64),
                pair_index=np.zeros(0, np.int64), query_index=np.zeros(0, np.int64),
            )
        text = self.loaded.text_features(texts)
        column = {t: i for i, t in enumerate(texts)}
        pairs = np.array([(f, pid, column[t]) for f, s in enumerate(sessions) for pid, t in sorted(s.concepts.items())],
                         dtype=np.int64).reshape(-1, 3)
        index = torch.from_numpy(pairs[:, [0, 2]].T.copy()).to(self.device)
        out = self.model.detector_model.detect(vision, index[0], text.features[index[1]], text.mask[index[1]])
        nms = np.array([c.det_nms_thresh for c in cfgs], dtype=np.float32) if self.options.detection_nms else None
        return select_detections(out.pred_masks, out.scores, pairs[:, 0], pairs[:, 1],
                                 np.array([c.score_threshold_detection for c in cfgs]), nms)

    def _propagate(self, feats: TrackerFrameFeatures, sessions: list[TrackerSession]) -> TrackedBatch:
        """Every object of every session onto its frame in one batch: per session its concept objects
        first, then its prompted ones."""
        concept = np.array([len(s.concept_rows) for s in sessions], dtype=np.int64)
        counts = concept + np.array([len(s.prompted_rows) for s in sessions], dtype=np.int64)
        if counts.sum() == 0:
            size = self._mask_size()
            return TrackedBatch(torch.zeros(0, 1, *size, device=self.device), torch.zeros(0, 1, device=self.device),
                                None, counts, concept)
        entries = [(s.memory, s.concept_rows + s.prompted_rows, s.frame_index) for s in sessions]
        out = propagate(self.model, feats, np.repeat(np.arange(len(sessions)), counts), entries)
        return TrackedBatch(out.low_res_masks.float(), out.object_score_logits.float(), out.object_pointer,
                            counts, concept)

    def _plan(self, sessions, detections: DetectionBatch, tracked: TrackedBatch) -> list[tuple[list[int], BatchPlan]]:
        """SAM 3's video logic for all sessions, batched (sessions whose video settings differ beyond
        the detection thresholds are planned in separate batches, one host read each)."""
        by_settings: dict[VideoConfig, list[int]] = {}
        for f, s in enumerate(sessions):
            by_settings.setdefault(shared_settings(s.video or self.video), []).append(f)
        det_offsets = np.concatenate(([0], np.cumsum(detections.session_counts)))
        groups = []
        for members in by_settings.values():
            det_rows = np.concatenate([np.arange(det_offsets[f], det_offsets[f + 1]) for f in members]).astype(np.int64)
            trk_rows = np.concatenate([tracked.concept_index(f) for f in members])
            frames = [SessionFrame(table=sessions[f].table, frame_idx=sessions[f].frame_index,
                                   cfg=sessions[f].video or self.video,
                                   det_prompt_ids=detections.prompt_ids[det_offsets[f]:det_offsets[f + 1]],
                                   det_scores=detections.scores[det_offsets[f]:det_offsets[f + 1]]) for f in members]
            whole = len(members) == len(sessions)  # the usual case: no gathers needed
            det_masks, det_valid = detections.masks, detections.valid
            if not whole:
                det_index = _to_device(det_rows, self.device)
                det_masks, det_valid = det_masks[det_index], det_valid[det_index]
            trk_index = _to_device(trk_rows, self.device)
            bp = plan_frames(frames, det_masks, det_valid, tracked.masks[trk_index, 0], tracked.scores[trk_index, 0],
                             hotstart_mode=self.options.hotstart_mode, fill_hole_masks=self.options.fill_holes,
                             evict_after_frames=self.options.evict_after_frames)
            groups.append((members, dataclasses.replace(bp, new_dets=det_rows[bp.new_dets])))
        return groups

    def _commit_tracked(self, feats, sessions, groups, applied, tracked: TrackedBatch) -> None:
        """Memories of this frame for objects that were tracked onto it: one batched encoder pass and
        one memory write per session, whatever the number of objects."""
        for members, bp in groups:
            n = bp.memory_masks.shape[0]
            src_mask, src_ptr, frames, cond, targets = [], [], [], [], []
            kept_at = 0
            concept_rows = np.concatenate([tracked.concept_index(f) for f in members])
            for f in members:
                kept = bp.keep_rows[kept_at: kept_at + len(applied[f].kept_rows)]
                kept_at += len(applied[f].kept_rows)
                prompted = tracked.prompted_index(f)
                if kept.size + prompted.size == 0:
                    continue
                src_mask += [kept, n + prompted]
                src_ptr += [concept_rows[kept], prompted]
                frames.append(np.full(kept.size + prompted.size, f))
                cond += bp.recondition[kept].tolist() + [False] * prompted.size
                targets.append((sessions[f].memory, applied[f].kept_rows + sessions[f].prompted_rows,
                                sessions[f].frame_index))
            if not targets:
                continue
            index = _to_device(np.concatenate(src_mask + src_ptr).astype(np.int64), self.device)
            m = int(sum(a.size for a in src_mask))
            mask_index, ptr_index = index[:m], index[m:]
            masks = torch.cat([bp.memory_masks, tracked.masks[:, 0].to(bp.memory_masks.dtype)])[mask_index, None]
            scores = torch.cat([bp.memory_score_logits, tracked.scores[:, 0]])[mask_index, None]
            commit_memories(self.model, feats, np.concatenate(frames), masks, scores, tracked.pointers[ptr_index],
                            targets, is_conditioning=cond, binarize=False)

    def _start_detected(self, feats, sessions, groups, applied, detections: DetectionBatch) -> None:
        """New objects from this frame's detections: initialised from their masks, memory committed.

        Their output on this frame is the detection mask (``FramePlan.out_masks``), as in SAM 3.
        """
        new_dets = np.concatenate([bp.new_dets for _, bp in groups])
        if new_dets.size == 0:
            return
        frames = np.concatenate([np.full(len(applied[f].new_rows), f) for members, _ in groups for f in members])
        targets = [(sessions[f].memory, applied[f].new_rows, sessions[f].frame_index)
                   for members, _ in groups for f in members if applied[f].new_rows]
        # the reference starts a track from its detection mask thresholded at logit 0.5
        masks = (detections.masks[_to_device(new_dets, self.device)] >= 0.5).float()[:, None]
        out = add_objects_from_masks(self.model, feats, frames, masks)
        commit_memories(self.model, feats, frames, out.high_res_masks, out.object_score_logits,
                        out.object_pointer, targets, is_conditioning=True, binarize=True)

    def _start_prompted(self, feats, sessions) -> list[list[tuple[int, torch.Tensor, float]]]:
        """Objects queued by add_box / add_points, started on this frame (rare: one at a time)."""
        tracker = self.model.tracker_model
        scale = self.loaded.config.image_size
        started: list[list[tuple[int, torch.Tensor, float]]] = [[] for _ in sessions]
        for f, session in enumerate(sessions):
            h, w = session.frame_size
            for prompt in session.take_pending():
                points, labels = _prompt_points(prompt, w, h, scale)
                out = tracker.decode_masks(
                    tracker.no_memory_features(feats.features[f : f + 1]),
                    tuple(x[f : f + 1] for x in feats.high_res),
                    points=points.to(self.device), point_labels=labels.to(self.device),
                    multimask_output=tracker.use_multimask(is_init_cond_frame=True, num_points=points.shape[1]),
                    return_high_res_masks=True,
                )
                row = session.start_prompted(prompt.track_id)
                commit_memories(self.model, feats, [f], out.high_res_masks, out.object_score_logits, out.object_pointer,
                                [(session.memory, [row], session.frame_index)], is_conditioning=True, binarize=True)
                (prob,) = to_host(out.object_score_logits.sigmoid())
                started[f].append((prompt.track_id, out.low_res_masks.float(), float(prob.reshape(-1)[0])))
        return started

    def _output(self, session, frame, plan: FramePlan, tracked, prompted) -> tuple[PendingResult, RenderItem]:
        """What one session reports on this frame, with its masks still to be rendered (all sessions at once)."""
        h, w = frame.shape[:2]
        trk_masks, trk_scores, _ = tracked
        n_prompted = len(session.prompted_ids) - len(prompted)
        prompted_masks = trk_masks[trk_masks.shape[0] - n_prompted:] if n_prompted else trk_masks[:0]
        visible = plan.out_visible
        ids = plan.out_obj_ids[visible].tolist() + session.prompted_ids
        concepts = [session.concepts.get(int(p), "?") for p in plan.out_prompt_ids[visible].tolist()]
        concepts += [PROMPTED_CONCEPT] * len(session.prompted_ids)
        groups = plan.out_prompt_ids[visible].tolist() + [-1] * len(session.prompted_ids)
        prompted_probs = trk_scores[trk_scores.shape[0] - n_prompted:, 0].sigmoid().tolist() if n_prompted else []
        scores = plan.out_scores[visible].tolist() + prompted_probs + [p for _, _, p in prompted]
        tracker_scores = plan.out_tracker_scores[visible].tolist() + prompted_probs + [p for _, _, p in prompted]
        tentative = plan.out_tentative[visible].tolist() + [False] * len(session.prompted_ids)
        if ids:
            low_res = torch.cat([plan.out_masks.to(self.device)[visible.to(self.device)].float()[:, None],
                                 prompted_masks, *[m for _, m, _ in prompted]])[:, 0]
        else:
            low_res = torch.zeros(0, *self._mask_size(), device=self.device)
        result = FrameResult(session.stream_id, session.frame_index, width=w, height=h,
                             retracted_ids=plan.removed_obj_ids.tolist(), evicted_ids=plan.evicted_obj_ids.tolist())
        item = RenderItem(low_res, torch.tensor(tracker_scores, dtype=torch.float32),
                          torch.tensor(groups, dtype=torch.long), (h, w))
        return PendingResult(result, ids, concepts, scores, tracker_scores, tentative), item

    def _mask_size(self) -> tuple[int, int]:
        h, w = self.model.tracker_model.prompt_encoder.image_embedding_size
        return 4 * h, 4 * w


def with_detection_threshold(video: VideoConfig, threshold: float) -> VideoConfig:
    """``video`` detecting at ``threshold``, with the new-object threshold scaled by the same factor."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"detection threshold {threshold} must be in (0, 1]")
    scale = threshold / video.score_threshold_detection
    return dataclasses.replace(video, score_threshold_detection=threshold,
                               new_det_thresh=min(1.0, video.new_det_thresh * scale))


def _check_frame(session: TrackerSession, frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {tuple(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"stream {session.stream_id!r}: a frame must be a uint8 RGB array [H, W, 3], got {got}")
    size = frame.shape[:2]
    if min(size) == 0:
        raise ValueError(f"stream {session.stream_id!r}: empty frame {tuple(frame.shape)}")
    session.accept_frame_size(size)


def _prompt_points(prompt: PromptedObject, w: int, h: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[1, K, 2]`` in model-input pixels and labels ``[1, K]``; a box becomes its corners (labels 2, 3)."""
    pts = list(prompt.points)
    labels = list(prompt.point_labels)
    if prompt.box_xyxy is not None:
        x0, y0, x1, y1 = prompt.box_xyxy
        pts += [(x0, y0), (x1, y1)]
        labels += [2, 3]
    xy = torch.tensor(pts, dtype=torch.float32) * torch.tensor([scale / w, scale / h])
    return xy[None], torch.tensor(labels, dtype=torch.int32)[None]
