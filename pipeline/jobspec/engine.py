"""``engine:``: how many engines run and how they batch, and the switches and thresholds of SAM 3's
video logic they run with.

What the streaming engine takes is built from this section whole: :meth:`EngineSpec.engine_options`
(its switches) and :meth:`TrackingSpec.apply` (its heuristics, over the checkpoint's), so every
knob set here reaches the engine unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.jobspec.common import Spec
from pipeline.validation_errors import FieldProblem
from sam3_runtime.config import VideoConfig
from sam3_runtime.video.types import EngineOptions

logger = logging.getLogger(__name__)

# SAM 3's own max_num_objects is 10000: unbounded in practice, so one crowded scene could grow every step
DEFAULT_MAX_OBJECTS_PER_STREAM = 64


class TrackingSpec(Spec):
    """``engine.tracking:``: thresholds of SAM 3's video heuristics. Each key left out keeps the
    checkpoint's value (the official ones are in the comments)."""

    # a detection starts a new track when it scores this much (0.7) at the detection threshold 0.5;
    # a stream whose watchlist detects lower scales it by the same factor
    new_object_threshold: float | None = Field(None, gt=0, le=1)
    association_iou: float | None = Field(None, gt=0, le=1)  # mask IoU tying a detection to a track (0.1)
    hotstart_delay: int | None = Field(None, ge=1)  # frames a new track stays tentative (15)
    recondition_every: int | None = Field(None, ge=0)  # re-anchor tracks on confident detections every N frames (16); 0: never
    max_objects: int | None = Field(None, ge=1)  # deprecated: engine.max_objects_per_stream

    def apply(self, checkpoint: VideoConfig) -> VideoConfig:
        """``checkpoint``'s heuristics with the values set here."""
        fields = {"new_object_threshold": "new_det_thresh", "association_iou": "assoc_iou_thresh",
                  "hotstart_delay": "hotstart_delay", "recondition_every": "recondition_every_nth_frame",
                  "max_objects": "max_num_objects"}
        changes = {name: getattr(self, key) for key, name in fields.items() if getattr(self, key) is not None}
        return dataclasses.replace(checkpoint, **changes)


class EngineSpec(Spec):
    replicas: int = Field(1, ge=1)  # engine actors; one per GPU
    num_cpus: int = Field(1, ge=1)  # CPU cores each engine reserves; a CPU engine runs that many torch threads
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(15.0, ge=0)
    max_in_flight: int = Field(4, ge=1)  # frames per stream sent to the engine and not yet back
    hotstart: Literal["tentative", "off"] = "tentative"
    detection_nms: bool = True  # mask NMS between detections of one concept
    fill_holes: bool = True  # fill small holes and drop small specks in tracked masks
    non_overlapping: bool = True  # a pixel belongs to at most one object of a concept
    evict_after_frames: int | None = Field(300, ge=1)  # drop objects absent this long; null: keep every object
    # objects tracked per stream (SAM 3's max_num_objects); new detections beyond it are dropped and counted
    max_objects_per_stream: int = Field(DEFAULT_MAX_OBJECTS_PER_STREAM, ge=1)
    compile: bool = False  # torch.compile the backbone and the tracker step (CUDA graphs on a GPU)
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("hotstart", mode="before")
    @classmethod
    def _bare_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads an unquoted `off` as false

    @field_validator("tracking", mode="before")
    @classmethod
    def _null_tracking(cls, value: Any) -> Any:
        return {} if value is None else value  # `tracking:` with every key commented out

    @model_validator(mode="after")
    def _hotstart_delay_needs_hotstart(self) -> EngineSpec:
        if self.hotstart == "off" and self.tracking.hotstart_delay is not None:
            raise FieldProblem(("tracking", "hotstart_delay"), "has no effect with engine.hotstart: off (remove it, "
                               "or set engine.hotstart: tentative)")
        return self

    @model_validator(mode="after")
    def _one_object_cap(self) -> EngineSpec:
        if self.tracking.max_objects is None:
            return self
        if "max_objects_per_stream" in self.model_fields_set:
            raise FieldProblem(("tracking", "max_objects"), "is the old name of engine.max_objects_per_stream, "
                               "which is set too: remove engine.tracking.max_objects")
        logger.warning("engine.tracking.max_objects is deprecated: rename it to engine.max_objects_per_stream")
        return self

    @property
    def objects_per_stream(self) -> int:
        """The cap on objects per stream: ``max_objects_per_stream``, or the deprecated ``tracking.max_objects``."""
        return self.tracking.max_objects if self.tracking.max_objects is not None else self.max_objects_per_stream

    def engine_options(self) -> EngineOptions:
        return EngineOptions(hotstart_mode=self.hotstart, detection_nms=self.detection_nms,
                             fill_holes=self.fill_holes, non_overlapping=self.non_overlapping,
                             evict_after_frames=self.evict_after_frames)
