"""What the streaming engine takes and gives: small typed records at its boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sam3_runtime.rle import RLE, pack_mask, packed_rle, unpack_mask

# The concept name of objects started from a box or point prompt rather than a concept; it is
# "box" for both because records and their consumers already read that value.
PROMPTED_CONCEPT = "box"


@dataclass(frozen=True)
class EngineOptions:
    """Switches of SAM 3's video logic that are not model sizes (those come from the checkpoint).

    hotstart_mode: ``"tentative"`` emits new tracks at once, flagged tentative, and retracts
        the ones SAM 3's hot-start rules reject within their first ``hotstart_delay`` frames;
        ``"off"`` never retracts (transformers' streaming behaviour).
    detection_nms: mask NMS between detections of one concept (on in the official model).
    fill_holes: fill small holes / drop small specks in tracker masks (on in the official model).
    non_overlapping: each pixel belongs to at most one object of a concept in the output.
    evict_after_frames: drop an object (and its memory) once it has been absent from the output
        this many consecutive frames, so an endless stream does not accumulate every object it
        ever saw (the official model keeps them all); None keeps them all too.
    """

    hotstart_mode: Literal["tentative", "off"] = "tentative"
    detection_nms: bool = True
    fill_holes: bool = True
    non_overlapping: bool = True
    evict_after_frames: int | None = 300


@dataclass(frozen=True)
class TrackedObject:
    """One object on one frame: plain numbers and its mask bit-packed (8 pixels a byte).

    The mask travels packed (``sam3_runtime.rle.pack_mask``'s layout) because every frame's
    objects cross from the engine's process to the stream's; ``mask`` unpacks it to a boolean
    ``[H, W]`` array at the frame's resolution, ``rle()`` gives its COCO RLE.
    """

    track_id: int
    concept: str
    score: float  # detection score when the track started (SAM 3's object score)
    tracker_score: float  # the tracker's confidence on this frame
    box_xyxy: tuple[float, float, float, float]  # tight box of the mask, pixels
    packed_mask: np.ndarray  # uint8 [ceil(H*W/8)]
    mask_size: tuple[int, int]  # (H, W)
    area_px: int  # pixels in the mask
    tentative: bool = False  # may still be retracted by hot-start

    @classmethod
    def from_mask(cls, mask: np.ndarray, **fields: Any) -> TrackedObject:
        """An object from a boolean ``[H, W]`` mask (``fields``: the other fields but the mask's)."""
        mask = np.asarray(mask, dtype=bool)
        return cls(packed_mask=pack_mask(mask), mask_size=(int(mask.shape[0]), int(mask.shape[1])),
                   area_px=int(np.count_nonzero(mask)), **fields)

    @property
    def mask(self) -> np.ndarray:
        """Boolean ``[H, W]`` (a fresh array on each call)."""
        return unpack_mask(self.packed_mask, self.mask_size)

    def rle(self) -> RLE:
        """The mask's COCO compressed RLE (``counts`` as a str)."""
        return packed_rle(self.packed_mask, self.mask_size)


@dataclass
class FrameResult:
    """The engine's answer for one stream's frame; ``error`` is set instead when the frame was refused."""

    stream_id: str
    frame_index: int
    width: int = 0
    height: int = 0
    objects: list[TrackedObject] = field(default_factory=list)
    retracted_ids: list[int] = field(default_factory=list)  # tentative tracks withdrawn on this frame
    evicted_ids: list[int] = field(default_factory=list)  # objects dropped after a long absence (already not shown)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
