"""Drawing instances on an image so a person can check a result at a glance."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def palette(i: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_instances(
    image: np.ndarray,
    masks: list[np.ndarray],
    boxes: list[tuple[float, float, float, float]],
    labels: list[str],
    color_ids: list[int] | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """Blend each mask in its colour, outline its box and write its label above the box."""
    out = image.astype(np.float32).copy()
    color_ids = color_ids if color_ids is not None else list(range(len(masks)))
    for mask, cid in zip(masks, color_ids, strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(palette(cid), dtype=np.float32)
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for box, label, cid in zip(boxes, labels, color_ids, strict=True):
        color = palette(cid)
        draw.rectangle(box, outline=color, width=2)
        x, y = box[0], max(0.0, box[1] - 12)
        tw = draw.textlength(label)
        draw.rectangle((x, y, x + tw + 4, y + 12), fill=color)
        draw.text((x + 2, y), label, fill=(0, 0, 0))
    return canvas
