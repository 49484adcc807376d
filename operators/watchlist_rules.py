"""A watchlist rule as the track table applies it: which objects of one concept *qualify* on a frame.

An object qualifies when its ``score`` reaches the rule's threshold and its anchor point lies
inside one of the rule's zones (no zones: anywhere). The anchor is the mask's centroid (pixel
centres, so a pixel ``(x, y)`` counts as ``(x + 0.5, y + 0.5)``), or the box centre for an empty
mask; ``zone_anchor`` can choose the box centre or the middle of the box's bottom edge (where
people and vehicles touch the ground) instead. ``min_frames`` / ``min_seconds`` say how long an
object must qualify before the table publishes it (see ``operators.lifecycle``).

``WatchRule`` is plain data (zones as tuples of points), so rules compare by value, travel in
resume points as JSON and can be diffed when a watchlist changes while the stream runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from sam3_runtime.video.types import TrackedObject

ZoneAnchor = Literal["centroid", "box_center", "box_bottom"]
ZONE_ANCHORS = ("centroid", "box_center", "box_bottom")

Zone = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class WatchRule:
    concept: str
    threshold: float = 0.5
    min_frames: int = 1
    min_seconds: float = 0.0
    zones: tuple[Zone, ...] = ()  # pixel polygons of >= 3 points; empty: the whole frame

    @classmethod
    def from_any(cls, rule: Any) -> WatchRule:
        """Validate a mapping, or any object with concept/threshold/min_frames/min_seconds/zones attributes."""
        if isinstance(rule, WatchRule):
            return rule
        get = rule.get if isinstance(rule, Mapping) else lambda name, default=None: getattr(rule, name, default)
        concept = get("concept", None)
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"watchlist rule {rule!r} has no concept name; give each rule a non-empty `concept`")
        threshold = float(get("threshold", 0.5))
        min_frames = int(get("min_frames", 1))
        min_seconds = float(get("min_seconds", 0.0))
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"rule {concept!r}: threshold must be in [0, 1], got {threshold}")
        if min_frames < 0 or not (min_seconds >= 0.0 and math.isfinite(min_seconds)):
            raise ValueError(f"rule {concept!r}: min_frames and min_seconds must be >= 0, got {min_frames}, "
                             f"{min_seconds}")
        zones = []
        for i, zone in enumerate(get("zones", None) or []):
            try:
                poly = np.asarray(zone, dtype=np.float64)
            except (TypeError, ValueError):
                poly = np.zeros((0,))
            if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.isfinite(poly).all():
                raise ValueError(
                    f"rule {concept!r}: zone {i} must be a polygon of at least 3 [x, y] pixel points, got {zone!r}"
                )
            zones.append(tuple((float(x), float(y)) for x, y in poly))
        return cls(concept, threshold, min_frames, min_seconds, tuple(zones))

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON-able data; ``from_any`` reads it back."""
        return {"concept": self.concept, "threshold": self.threshold, "min_frames": self.min_frames,
                "min_seconds": self.min_seconds, "zones": [[list(p) for p in zone] for zone in self.zones]}

    @cached_property
    def polygons(self) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(zone, dtype=np.float64) for zone in self.zones)

    def qualifies(self, obj: TrackedObject, anchor: ZoneAnchor) -> bool:
        """Whether ``obj`` (of this rule's concept) reaches the threshold inside the zones on this frame."""
        if obj.score < self.threshold:
            return False
        if not self.zones:
            return True
        x, y = anchor_point(obj, anchor)
        return any(inside(poly, x, y) for poly in self.polygons)


def inside(poly: np.ndarray, x: float, y: float) -> bool:
    """Even-odd rule: count the polygon edges crossed by a ray from (x, y) towards +x."""
    xs, ys = poly[:, 0], poly[:, 1]
    xp, yp = np.roll(xs, 1), np.roll(ys, 1)
    spans = (ys > y) != (yp > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = xs + (y - ys) * (xp - xs) / (yp - ys)
    return bool(np.count_nonzero(spans & (x < x_cross)) % 2)


def anchor_point(obj: TrackedObject, mode: ZoneAnchor) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box_xyxy
    if mode == "box_bottom":
        return (x0 + x1) / 2, y1
    if mode == "centroid":
        mask = np.asarray(obj.mask, dtype=bool)
        cols = mask.sum(axis=0)
        area = int(cols.sum())
        if area:
            rows = mask.sum(axis=1)
            return float(cols @ (np.arange(len(cols)) + 0.5)) / area, float(rows @ (np.arange(len(rows)) + 0.5)) / area
    return (x0 + x1) / 2, (y0 + y1) / 2
