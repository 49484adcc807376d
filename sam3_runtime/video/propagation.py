"""Batched tracker steps for a streaming engine: objects of many streams in one pass.

Per engine step the engine runs the backbone once per frame (``F`` frames, one per stream in
the step), then:

1. ``tracker_features``: the tracker neck and the decoder's high-resolution projections, once
   per frame.
2. ``propagate``: every tracked object of every stream, conditioned on its own stream's
   memory (memory attention) and decoded (SAM head), in one batch of ``N`` objects.
   ``frame_index [N]`` says which of the ``F`` frames each object reads.
3. ``add_objects_from_boxes`` / ``add_objects_from_masks``: first frame of new objects.
4. ``commit_memories``: encode the final masks of the frame into memories and write them
   into each stream's :class:`~sam3_runtime.video.memory.ObjectMemory`.

Feature maps are never copied per object when all objects read one frame (batch-1 tensors
broadcast); with several frames they are gathered once per call.

What stays with the engine (as in transformers' ``Sam3VideoModel``): between 2 and 4 it post-
processes the tracked low-res masks (hole filling, non-overlap / shrinkage suppression) and
commits *those* (4h x 4w logits, ``binarize=False``, object score = +10 / -10 for a non-empty /
empty mask) with the pointers from ``propagate``; a tracked frame that it re-conditions is
committed with ``is_conditioning=True``. Memories must be committed once per frame per object,
after ``propagate`` of that frame and before the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sam3_runtime.modeling.tracker import MemoryBank, TrackerMaskOutput, TrackerModel

from .memory import ObjectMemory, Rows, _as_rows, gather_banks

# The tracker reads the first three levels of its neck (strides 4, 2, 1 of the token grid).
TRACKER_FPN_LEVELS = 3
# SAM 2 video convention for a box prompt: its corners as two points labelled 2 and 3.
BOX_CORNER_LABELS = (2, 3)

StreamRows = tuple[ObjectMemory, Rows, int]


@dataclass
class TrackerFrameFeatures:
    """Tracker inputs of ``F`` frames.

    features: ``[F, C, h, w]`` lowest-resolution neck level (raw, no memory).
    position: ``[1, C, h, w]`` its sine position encoding (the same for every frame).
    high_res: ``([F, C/8, 4h, 4w], [F, C/4, 2h, 2w])`` decoder skip features (conv_s0 / conv_s1 applied).
    """

    features: Tensor
    position: Tensor
    high_res: tuple[Tensor, Tensor]

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    def per_object(self, frame_index: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Features ``[N, C, h, w]`` (an expanded view when there is one frame) and high-res
        features (batch 1 when there is one frame, shared by all objects) of each object's frame."""
        if self.num_frames == 1:
            return self.features.expand(frame_index.shape[0], -1, -1, -1), self.high_res
        idx = frame_index.to(self.features.device, torch.long)
        s0, s1 = self.high_res
        return self.features.index_select(0, idx), (s0.index_select(0, idx), s1.index_select(0, idx))


@dataclass
class PropagationOutput:
    """Per object: ``low_res_masks [N, 1, 4h, 4w]`` mask logits (``NO_OBJECT_SCORE`` when absent),
    ``object_score_logits [N, 1]`` (> 0 = visible), ``object_pointer [N, C]``, ``iou_scores [N, K]``
    and, when asked for, ``high_res_masks [N, 1, image_size, image_size]``."""

    low_res_masks: Tensor
    object_score_logits: Tensor
    object_pointer: Tensor
    iou_scores: Tensor
    high_res_masks: Tensor | None = None

    @classmethod
    def from_tracker(cls, out: TrackerMaskOutput) -> PropagationOutput:
        return cls(out.low_res_masks, out.object_score_logits, out.object_pointer, out.iou_scores, out.high_res_masks)


def _tracker(model) -> TrackerModel:
    return getattr(model, "tracker_model", model)


def _index(frame_index: Tensor | Sequence[int], device: torch.device) -> Tensor:
    return torch.as_tensor(frame_index, dtype=torch.long, device=device).reshape(-1)


def tracker_features(model, backbone_features: Tensor) -> TrackerFrameFeatures:
    """``backbone_features [F, C_vit, h, w]`` (the detector ViT's output) -> tracker inputs.

    model: a ``Sam3Model`` (its ``tracker_neck`` and ``tracker_model``).
    """
    neck = model.tracker_neck(backbone_features, num_levels=TRACKER_FPN_LEVELS)
    s0, s1, top = neck.features
    high_res = _tracker(model).project_high_res_features(s0, s1)
    return TrackerFrameFeatures(features=top, position=neck.position_encodings[-1][:1], high_res=high_res)


def propagate(
    model,
    frame_feats: TrackerFrameFeatures,
    frame_index: Tensor | Sequence[int],
    banks: Sequence[StreamRows] | MemoryBank,
    *,
    return_high_res_masks: bool = False,
) -> PropagationOutput:
    """Track ``N`` objects onto their current frame in one batched pass.

    frame_index: ``[N]`` which frame of ``frame_feats`` each object reads. banks: per stream
    ``(memory, rows, frame_idx)`` (objects in that order, streams concatenated) or an
    already gathered ``MemoryBank`` of ``N`` objects. Objects without any memory get the
    "no memory" conditioning. The SAM head runs without prompts and, as in SAM 2 tracking,
    picks the best of 3 candidates. ``high_res_masks`` (image_size) on request: it is the mask
    the reference tracker hands to the memory encoder.
    """
    tracker = _tracker(model)
    idx = _index(frame_index, frame_feats.features.device)
    bank = banks if isinstance(banks, MemoryBank) else gather_banks(banks)
    feats, high_res = frame_feats.per_object(idx)
    # the frames themselves, not per-object copies: layer 0's self-attention runs once per frame
    conditioned = tracker.condition_on_memory(frame_feats.features, frame_feats.position, bank, frame_index=idx)
    out = tracker.decode_masks(
        conditioned,
        high_res,
        multimask_output=tracker.use_multimask(is_init_cond_frame=False, num_points=0),
        return_high_res_masks=return_high_res_masks,
    )
    return PropagationOutput.from_tracker(out)


def add_objects_from_boxes(
    model,
    frame_feats: TrackerFrameFeatures,
    frame_index: Tensor | Sequence[int],
    boxes: Tensor,
    *,
    return_high_res_masks: bool = True,
) -> PropagationOutput:
    """First frame of objects prompted by a box each: ``boxes [N, 4]`` xyxy in model-input pixels.

    As in SAM 2 / SAM 3 video, the box goes in as its two corners (labels 2, 3) on the
    "no memory" features; with two prompt points the head gives a single mask. The result is a
    conditioning frame: commit it with ``is_conditioning=True, binarize=True``.
    """
    tracker = _tracker(model)
    idx = _index(frame_index, frame_feats.features.device)
    feats, high_res = frame_feats.per_object(idx)
    n = boxes.shape[0]
    points = boxes.reshape(n, 2, 2)
    labels = torch.tensor(BOX_CORNER_LABELS, dtype=torch.int32, device=boxes.device).expand(n, 2)
    out = tracker.decode_masks(
        tracker.no_memory_features(feats),
        high_res,
        points=points,
        point_labels=labels,
        multimask_output=tracker.use_multimask(is_init_cond_frame=True, num_points=2),
        return_high_res_masks=return_high_res_masks,
    )
    return PropagationOutput.from_tracker(out)


def add_objects_from_masks(
    model, frame_feats: TrackerFrameFeatures, frame_index: Tensor | Sequence[int], masks: Tensor
) -> PropagationOutput:
    """First frame of objects given by a mask each (e.g. new detections): ``masks [N, 1, H, W]``.

    Bool masks are resized as "any coverage"; float {0, 1} masks bilinearly (what
    transformers' SAM 3 video model does with ``det_mask >= 0.5`` cast to float). The mask is
    taken as the frame's output; ``high_res_masks`` is what to commit, with
    ``is_conditioning=True, binarize=True``.
    """
    tracker = _tracker(model)
    idx = _index(frame_index, frame_feats.features.device)
    feats, high_res = frame_feats.per_object(idx)
    return PropagationOutput.from_tracker(tracker.init_from_masks(feats, high_res, masks))


def commit_memories(
    model,
    frame_feats: TrackerFrameFeatures,
    frame_index: Tensor | Sequence[int],
    mask_logits: Tensor,
    object_score_logits: Tensor,
    object_pointers: Tensor,
    targets: Sequence[StreamRows],
    *,
    is_conditioning: bool | Sequence[bool] | Tensor = False,
    binarize: bool | Tensor = False,
) -> None:
    """Encode ``N`` objects' final masks on their frames and write them into their streams' memories.

    mask_logits: ``[N, 1, H, W]`` at any size (the memory encoder resizes to 16h x 16w;
    transformers' tracker feeds the image_size masks, its SAM 3 video model the 4h x 4w ones
    after its post-processing). object_score_logits: ``[N, 1]`` (<= 0 adds the occlusion
    embedding). object_pointers: ``[N, C]``. targets: ``(memory, rows, frame_idx)`` per
    stream, objects in that order. is_conditioning / binarize: for all or per object
    (prompted and mask-initialised frames: both True; tracked frames: both False).
    """
    rows = [_as_rows(r) for _, r, _ in targets]
    if sum(r.size for r in rows) != mask_logits.shape[0]:
        raise ValueError(f"targets name {sum(r.size for r in rows)} objects but {mask_logits.shape[0]} masks were given")
    tracker = _tracker(model)
    idx = _index(frame_index, frame_feats.features.device)
    # one frame: project its features once for all objects (the encoder broadcasts batch 1)
    feats = frame_feats.features if frame_feats.num_frames == 1 else frame_feats.per_object(idx)[0]
    memory_dtype = targets[0][0].memory_dtype
    binarize = torch.as_tensor(binarize, device=mask_logits.device)
    encoded = tracker.encode_memory(feats, mask_logits, object_score_logits, binarize=binarize, memory_dtype=memory_dtype)
    if isinstance(is_conditioning, Tensor):
        is_conditioning = is_conditioning.cpu().tolist()
    start = 0
    for (memory, _, frame_idx), r in zip(targets, rows, strict=True):
        stop = start + r.size
        flags = is_conditioning if isinstance(is_conditioning, bool) else list(is_conditioning[start:stop])
        memory.write(r, frame_idx, encoded.features[start:stop], object_pointers[start:stop], flags)
        start = stop
