"""One row per track of a file: when it was seen, how well, and a thumbnail of it at its best frame.

:class:`TrackSummaries` folds a file's published observations (``TrackObservation``) into the
rows of the index's ``track_summaries`` table (``operators.index_tables.TRACK_SUMMARY_SCHEMA``).
The thumbnail is cut from the frame where the track's score was highest (the first such frame)
and shrunk to at most ``THUMBNAIL_PX`` a side, so memory stays one small crop per track.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from operators.index_tables import THUMBNAIL_PX
from operators.records import TrackObservation

_JPEG_QUALITY = 85


@dataclass
class _Summary:
    concept: str
    start_frame: int
    start_pts: float
    end_frame: int
    end_pts: float
    observations: int = 0
    score_sum: float = 0.0
    max_score: float = -math.inf
    best_frame: int = -1
    best_pts: float = 0.0
    best_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    thumbnail: Image.Image | None = None


class TrackSummaries:
    def __init__(self, uri: str, model: str, run_id: str, thumbnail_px: int = THUMBNAIL_PX):
        self.uri, self.model, self.run_id = uri, model, run_id
        self.thumbnail_px = thumbnail_px
        self._tracks: dict[int, _Summary] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def add(self, observations: Iterable[TrackObservation], image: np.ndarray | None) -> None:
        """Fold one frame's observations in; ``image`` (uint8 RGB, H x W x 3) is that frame."""
        for obs in observations:
            track = self._tracks.get(obs.track_id)
            if track is None:
                track = self._tracks[obs.track_id] = _Summary(obs.concept, obs.frame_index, obs.pts_s,
                                                              obs.frame_index, obs.pts_s)
            track.end_frame, track.end_pts = obs.frame_index, obs.pts_s
            track.observations += 1
            track.score_sum += obs.score
            if obs.score > track.max_score:
                track.max_score, track.best_frame, track.best_pts = obs.score, obs.frame_index, obs.pts_s
                track.best_box = tuple(float(v) for v in obs.box_xyxy)
                track.thumbnail = None if image is None else self._crop(image, track.best_box)

    def _crop(self, image: np.ndarray, box: tuple[float, float, float, float]) -> Image.Image | None:
        height, width = image.shape[:2]
        x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
        if x1 <= x0 or y1 <= y0:
            return None
        crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
        crop.thumbnail((self.thumbnail_px, self.thumbnail_px))
        return crop

    def rows(self) -> list[dict[str, Any]]:
        """The ``track_summaries`` rows, by track id."""
        return [self._row(track_id, t) for track_id, t in sorted(self._tracks.items())]

    def _row(self, track_id: int, t: _Summary) -> dict[str, Any]:
        jpeg = None
        if t.thumbnail is not None:
            buffer = io.BytesIO()
            t.thumbnail.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
            jpeg = buffer.getvalue()
        return {
            "uri": self.uri, "track_id": track_id, "concept": t.concept,
            "start_pts_s": t.start_pts, "end_pts_s": t.end_pts, "duration_s": t.end_pts - t.start_pts,
            "start_frame": t.start_frame, "end_frame": t.end_frame, "observations": t.observations,
            "max_score": t.max_score, "mean_score": t.score_sum / t.observations,
            "best_frame_index": t.best_frame, "best_pts_s": t.best_pts, "best_box_xyxy": list(t.best_box),
            "thumbnail_jpeg": jpeg, "model": self.model, "run_id": self.run_id,
        }
