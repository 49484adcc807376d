"""``sam3-stream segment IMAGE...``: every instance of a concept (or of boxed exemplars) in images."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.commands.args import UsageError, add_model_args, parse_box
from pipeline.exit_codes import ExitCode

logger = logging.getLogger(__name__)


def register(sub) -> None:
    seg = sub.add_parser("segment", help="segment every instance of a concept in images")
    seg.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_args(seg)
    seg.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a noun phrase; repeatable")
    seg.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[:neg]",
                     help="an exemplar box in pixels, ':neg' for a negative one; repeatable")
    seg.add_argument("--threshold", type=float, default=0.5, help="minimum score (class x presence), default 0.5")
    seg.add_argument("--nms", type=float, default=None, metavar="IOU", help="mask NMS at this IoU (off by default)")
    seg.add_argument("--json", dest="json_out", metavar="OUT|-", help="write results as JSON to a file or '-' for stdout")
    seg.add_argument("--overlay", metavar="OUT.png", help="draw masks, boxes and labels on the image(s)")
    seg.set_defaults(handler=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from sam3_runtime.model import load_model
    from sam3_runtime.preprocess import load_image
    from sam3_runtime.segmenter import BoxPrompt, ImageSegmenter, Prompt

    boxes = tuple(BoxPrompt(*parse_box(b)) for b in args.box)
    if not args.prompt and not boxes:
        raise UsageError("nothing to segment: give --prompt TEXT and/or --box x0,y0,x1,y1")
    if boxes and len(args.prompt) > 1:
        raise UsageError("--box goes with at most one --prompt (the text that names what the boxes show)")
    prompts = [Prompt(text=t, boxes=boxes) for t in args.prompt] or [Prompt(boxes=boxes)]
    images = [load_image(p) for p in args.images]  # read every input before loading the model
    loaded = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
    results = ImageSegmenter(loaded).segment(images, prompts, threshold=args.threshold, nms_iou=args.nms)

    payload = {"model": loaded.model_id, "images": [
        {"path": str(path), "width": r.width, "height": r.height, "instances": [i.to_json() for i in r.instances]}
        for path, r in zip(args.images, results, strict=True)
    ]}
    if args.json_out == "-":
        sys.stdout.write(json.dumps(payload) + "\n")
    elif args.json_out:
        Path(args.json_out).write_text(json.dumps(payload, indent=1))
        logger.info("wrote %s", args.json_out)
    if args.overlay:
        _write_overlays(args.overlay, images, results)
    if args.json_out != "-":
        _print_summary(args.images, results)
    return ExitCode.OK


def _write_overlays(target: str, images, results) -> None:
    from sam3_runtime.overlay import draw_instances

    out = Path(target)
    for k, (image, r) in enumerate(zip(images, results, strict=True)):
        path = out if len(images) == 1 else out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}")
        labels = [f"{i.prompt} {i.score:.2f}" for i in r.instances]
        draw_instances(image, [i.mask for i in r.instances], [i.box_xyxy for i in r.instances], labels).save(path)
        logger.info("wrote %s", path)


def _print_summary(paths, results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("image", "prompt", "score", "box (x0, y0, x1, y1)", "area px")
    for path, r in zip(paths, results, strict=True):
        if not r.instances:
            table.add_row(str(path), "-", "-", "no instance above the threshold", "-")
        for inst in r.instances:
            table.add_row(str(path), inst.prompt, f"{inst.score:.3f}",
                          ", ".join(f"{v:.0f}" for v in inst.box_xyxy), str(int(inst.mask.sum())))
    Console().print(table)
