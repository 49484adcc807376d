"""The engine's output path per frame: the old per-session code against ``render.render_step``.

    python -m bench.bench_output                      # 1080p, 16 objects, 1 session
    python -m bench.bench_output --sessions 4 --objects 16 --size 1080 1920

Both sides start from the same low-resolution mask logits (round blobs, so masks look like objects
and their RLE like real ones) and end where the stream actor has its records' masks:

- engine: upsample, threshold, non-overlap, boxes, and the copy to the host. The old path did this
  per session with float32 logits at frame size and read back one bool byte a pixel; the new one
  renders every session in one call and reads back packed bits (1 bit a pixel) in one copy.
- Ray: the pickled ``FrameResult`` objects the engine actor returns (what crosses to the stream
  actor), in bytes per frame.
- stream: COCO RLE and area of every object (what the records carry).

Reported per frame (one session's frame): median CPU seconds (process time, all threads) and bytes.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam3_runtime.masks import encode_rle, masks_to_boxes
from sam3_runtime.video.heuristics import non_overlapping
from sam3_runtime.video.render import PendingResult, RenderItem, render_step
from sam3_runtime.video.types import FrameResult

logger = logging.getLogger("bench_output")
LOW_RES = 288  # the tracker's mask logits for a 1008-pixel model input


@dataclass
class _OldObject:
    """The old ``TrackedObject``: a bool mask at frame size."""

    track_id: int
    concept: str
    score: float
    tracker_score: float
    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray
    tentative: bool = False


def _items(sessions: int, objects: int, size: tuple[int, int], seed: int = 0) -> list[RenderItem]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(LOW_RES).float(), torch.arange(LOW_RES).float(), indexing="ij")
    items = []
    for _ in range(sessions):
        centres = torch.rand(objects, 2, generator=g) * LOW_RES
        radii = 8 + torch.rand(objects, generator=g) * 40
        dist = ((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2).sqrt()
        logits = (radii[:, None, None] - dist) / 4
        scores = torch.rand(objects, generator=g)
        groups = torch.randint(0, 2, (objects,), generator=g)
        items.append(RenderItem(logits, scores, groups, size))
    return items


def _old(items: list[RenderItem], non_overlap: bool) -> list[FrameResult]:
    """The engine's ``_output`` before ``render_step``, once per session."""
    results = []
    for i, item in enumerate(items):
        h, w = item.size
        result = FrameResult(f"s{i}", 0, width=w, height=h)
        masks = F.interpolate(item.low_res[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0
        if non_overlap and masks.shape[0] > 1:
            masks = non_overlapping(masks, item.tracker_scores, item.groups)
        nonempty = masks.flatten(1).any(1)
        boxes = masks_to_boxes(masks).tolist()
        masks_np = masks.cpu().numpy()
        for k in torch.nonzero(nonempty).flatten().tolist():
            result.objects.append(_OldObject(k, "c", 0.5, 0.5, tuple(boxes[k]), masks_np[k]))  # type: ignore[arg-type]
        results.append(result)
    return results


def _new(items: list[RenderItem], non_overlap: bool) -> list[FrameResult]:
    results = []
    for i, (item, rendered) in enumerate(zip(items, render_step(items, non_overlap), strict=True)):
        m = item.low_res.shape[0]
        pending = PendingResult(FrameResult(f"s{i}", 0, width=item.size[1], height=item.size[0]), list(range(m)),
                                ["c"] * m, [0.5] * m, [0.5] * m, [False] * m)
        results.append(pending.result_with(rendered))
    return results


def _old_records(result: FrameResult) -> list:
    masks = np.stack([o.mask for o in result.objects])
    return list(zip(encode_rle(masks), masks.reshape(len(masks), -1).sum(1), strict=True))


def _new_records(result: FrameResult) -> list:
    return [(o.rle(), o.area_px) for o in result.objects]


def _cpu(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--overlapping", action="store_true", help="skip the non-overlap rule")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    items = _items(args.sessions, args.objects, tuple(args.size))
    non_overlap = not args.overlapping
    s = args.sessions
    rows = []
    for name, engine, records in (("old", _old, _old_records), ("new", _new, _new_records)):
        _cpu(lambda engine=engine: engine(items, non_overlap), 1)  # warm-up
        e_cpu, e_wall, results = _cpu(lambda engine=engine: engine(items, non_overlap), args.repeats)
        wire = sum(len(pickle.dumps(r, protocol=5)) for r in results)
        host = sum(o.mask.nbytes if name == "old" else o.packed_mask.nbytes for r in results for o in r.objects)
        r_cpu, _, _ = _cpu(lambda results=results, records=records: [records(r) for r in results], args.repeats)
        kept = sum(len(r.objects) for r in results)
        rows.append((name, e_cpu / s, e_wall / s, host / s, wire / s, r_cpu / s, kept / s))
    logger.info("%d session(s) x %d objects at %dx%d, non-overlap %s, torch threads %d; per session frame:",
                s, args.objects, *args.size, "on" if non_overlap else "off", torch.get_num_threads())
    logger.info("%-4s %12s %12s %14s %14s %14s %8s", "path", "engine cpu s", "engine wall", "host bytes",
                "Ray bytes", "records cpu s", "objects")
    for name, e_cpu, e_wall, host, wire, r_cpu, kept in rows:
        logger.info("%-4s %12.4f %12.4f %14.0f %14.0f %14.4f %8.1f", name, e_cpu, e_wall, host, wire, r_cpu, kept)


if __name__ == "__main__":
    main()
