"""Re-linking identities after an engine restart: new engine tracks onto the stream's durable ids.

A restarted engine re-acquires the objects it was tracking but numbers them afresh. The stream's
track table remembers each live track's concept and last box; a new track of the same concept whose box
overlaps a remembered one (IoU >= ``min_iou``) takes that track's durable id, best overlaps first.
"""

from __future__ import annotations

from collections.abc import Iterable

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_tracks(
    remembered: dict[int, tuple[str, Box]],
    new: Iterable[tuple[int, str, Box]],
    min_iou: float = 0.3,
) -> dict[int, int]:
    """``{new engine id: durable id}`` by greedy box IoU within each concept."""
    pairs = []
    for engine_id, concept, box in new:
        for durable, (c, last_box) in remembered.items():
            if c == concept:
                iou = box_iou(box, last_box)
                if iou >= min_iou:
                    pairs.append((iou, engine_id, durable))
    mapping, used = {}, set()
    for _, engine_id, durable in sorted(pairs, reverse=True):
        if engine_id not in mapping and durable not in used:
            mapping[engine_id] = durable
            used.add(durable)
    return mapping
