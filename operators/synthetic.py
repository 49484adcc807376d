"""Deterministic test videos: coloured shapes moving over a plain background.

Shape positions depend only on time (``index / fps``), so two videos with different frame
rates show the same motion, and :func:`shape_boxes` gives the exact ground-truth boxes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operators.video_writer import DEFAULT_CODECS, VideoWriter

BACKGROUND: tuple[int, int, int] = (48, 48, 48)


@dataclass(frozen=True, slots=True)
class SyntheticShape:
    """A shape bouncing inside the frame; sizes and speeds are fractions of the frame size."""

    name: str
    kind: str  # "square" | "disc" | "bar"
    colour: tuple[int, int, int]
    extent: tuple[float, float]  # (width, height) as fractions of the frame height
    start: tuple[float, float]  # top-left position, as fractions of the free travel range
    velocity: tuple[float, float]  # travel ranges crossed per second, (x, y)


SHAPES: tuple[SyntheticShape, ...] = (
    SyntheticShape("red_square", "square", (230, 40, 40), (0.25, 0.25), (0.0, 0.2), (0.5, 0.0)),
    SyntheticShape("green_disc", "disc", (40, 200, 60), (0.3, 0.3), (0.7, 0.0), (0.0, 0.4)),
    SyntheticShape("blue_bar", "bar", (50, 80, 230), (0.45, 0.15), (0.3, 0.9), (0.3, -0.25)),
)


def _bounce(position: float) -> float:
    """Triangle wave on [0, 1]: moving right, reaching the edge, coming back."""
    phase = position % 2.0
    return phase if phase <= 1.0 else 2.0 - phase


def shape_boxes(t: float, size: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """Pixel boxes ``(x0, y0, x1, y1)`` (exclusive ends) of every shape at time ``t`` seconds."""
    width, height = size
    boxes = {}
    for shape in SHAPES:
        box_w = max(2, round(shape.extent[0] * height))
        box_h = max(2, round(shape.extent[1] * height))
        x0 = round(_bounce(shape.start[0] + shape.velocity[0] * t) * (width - box_w))
        y0 = round(_bounce(shape.start[1] + shape.velocity[1] * t) * (height - box_h))
        boxes[shape.name] = (x0, y0, x0 + box_w, y0 + box_h)
    return boxes


def synthetic_frame(index: int, size: tuple[int, int] = (160, 120), fps: float = 10.0) -> np.ndarray:
    """The uint8 RGB [H, W, 3] picture of frame ``index``; later shapes are drawn over earlier ones."""
    width, height = size
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    ys, xs = np.mgrid[0:height, 0:width]
    for shape in SHAPES:
        x0, y0, x1, y1 = shape_boxes(index / fps, size)[shape.name]
        if shape.kind == "disc":
            cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
            radius = (x1 - x0) / 2
            inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
            image[inside] = shape.colour
        else:
            image[y0:y1, x0:x1] = shape.colour
    return image


def write_synthetic_video(
    path: str | os.PathLike[str],
    frames: int = 30,
    size: tuple[int, int] = (160, 120),
    fps: float = 10.0,
    codec: str | None = None,
    *,
    container_options: Mapping[str, str] | None = None,
) -> Path:
    """Encode ``frames`` synthetic frames of ``size`` = (width, height) to ``path`` and return it.

    ``codec=None`` takes the writer's default fallback list (libx264, then mpeg4); a named codec
    must be available. ``container_options`` go to the muxer (e.g. ``{}`` to keep an MP4's index
    at the end of the file instead of the writer's default front placement).
    """
    codecs = DEFAULT_CODECS if codec is None else (codec,)
    with VideoWriter(path, fps, size, codecs=codecs, container_options=container_options) as writer:
        for index in range(frames):
            writer.write(synthetic_frame(index, size, fps))
    return writer.path
