"""The ``sam3-stream`` command line.

Exit codes: 0 success, 2 bad arguments, input or configuration (one clear line on stderr),
3 the job ran but some streams failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3

logger = logging.getLogger("sam3_stream")


class UsageError(ValueError):
    """Bad arguments or input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors follow our one-line, exit-2 rule
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sam3-stream", description="SAM 3 segmentation and tracking at scale")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a streaming job: video sources in, SAM 3 tracks out to Kafka and Parquet")
    run.add_argument("job", metavar="JOB.yaml")
    run.add_argument("--max-seconds", type=float, default=None, metavar="N", help="stop gracefully after N seconds")
    run.add_argument("--no-progress", action="store_true", help="no live progress table")
    run.add_argument("--resume", action="store_true",
                     help="carry each stream on from the checkpoint a previous run left beside its Parquet output")

    seg = sub.add_parser("segment", help="segment every instance of a concept in images")
    seg.add_argument("images", nargs="+", metavar="IMAGE")
    _model_args(seg)
    seg.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a noun phrase; repeatable")
    seg.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[:neg]",
                     help="an exemplar box in pixels, ':neg' for a negative one; repeatable")
    seg.add_argument("--threshold", type=float, default=0.5, help="minimum score (class x presence), default 0.5")
    seg.add_argument("--nms", type=float, default=None, metavar="IOU", help="mask NMS at this IoU (off by default)")
    seg.add_argument("--json", dest="json_out", metavar="OUT|-", help="write results as JSON to a file or '-' for stdout")
    seg.add_argument("--overlay", metavar="OUT.png", help="draw masks, boxes and labels on the image(s)")

    trk = sub.add_parser("track", help="track every instance of concepts (or boxed objects) through a video")
    trk.add_argument("video", metavar="VIDEO")
    _model_args(trk)
    trk.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a concept to track; repeatable")
    trk.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                     help="an object to track, boxed on the first frame in pixels; repeatable")
    trk.add_argument("--fps", type=float, default=None, help="sample the video at this rate (default: every frame)")
    trk.add_argument("--threshold", type=float, default=None, help="detection score threshold (default: the checkpoint's, 0.5; the new-track threshold scales with it)")
    trk.add_argument("--hotstart", choices=["tentative", "off"], default="tentative",
                     help="tentative: new tracks are flagged until SAM 3's hot-start confirms them (default); off: never retract")
    trk.add_argument("--out", metavar="FILE.jsonl|FILE.parquet", help="one record per (frame, object)")
    trk.add_argument("--overlay", metavar="OUT.mp4", help="write the video with masks and track ids drawn")
    trk.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    samples = sub.add_parser("samples", help="write the synthetic sample videos the example jobs use")
    samples.add_argument("out_dir", metavar="DIR", nargs="?", default="configs/examples/media")

    ckpt = sub.add_parser("checkpoint", help="inspect or create checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", required=True, parser_class=_Parser)
    check = ckpt_sub.add_parser("check", help="map a checkpoint's keys onto the full-size model (no weights loaded)")
    check.add_argument("path", metavar="PATH", help="checkpoint directory, .pt/.safetensors file, hub repo id or .tsv key list")
    init = ckpt_sub.add_parser("init-random", help="write a randomly initialised checkpoint (for demos and tests)")
    init.add_argument("out_dir", metavar="DIR")
    init.add_argument("--seed", type=int, default=0)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="facebook/sam3",
                   help="hub repo id, local directory or .pt/.safetensors file (default facebook/sam3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            from pipeline.driver import run_job

            return run_job(args.job, max_seconds=args.max_seconds, show_progress=not args.no_progress,
                           resume=args.resume).exit_code
        if args.command == "segment":
            return _segment(args)
        if args.command == "samples":
            return _samples(args)
        if args.command == "track":
            from pipeline.track import run_track

            return run_track(args)
        if args.command == "checkpoint" and args.checkpoint_command == "check":
            return _checkpoint_check(args)
        if args.command == "checkpoint" and args.checkpoint_command == "init-random":
            return _checkpoint_init(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"sam3-stream: error: {e}\n")
        return EXIT_USAGE
    raise AssertionError(f"unhandled command {args.command}")


def parse_box(text: str, allow_negative: bool = True) -> tuple[tuple[float, float, float, float], bool]:
    """``x0,y0,x1,y1[:neg]`` in pixels -> (box, positive); a box without area is refused."""
    coords, _, flag = text.partition(":")
    if flag not in ("", "neg", "pos") or (flag and not allow_negative):
        raise UsageError(f"--box {text!r}: the suffix must be ':neg' or ':pos'" if allow_negative
                         else f"--box {text!r}: expected x0,y0,x1,y1 without a suffix")
    try:
        values = tuple(float(v) for v in coords.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UsageError(f"--box {text!r}: expected four numbers x0,y0,x1,y1 in pixels")
    if not (values[2] > values[0] and values[3] > values[1]):
        raise UsageError(f"--box {text!r} has no area: x1 must exceed x0 and y1 must exceed y0")
    return values, flag != "neg"


def _segment(args) -> int:
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
    return EXIT_OK


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


def _samples(args) -> int:
    from operators.synthetic import write_synthetic_video

    out = Path(args.out_dir)
    for name, frames in (("demo_a.mp4", 40), ("demo_b.mp4", 60)):
        write_synthetic_video(out / name, frames=frames, size=(160, 120), fps=10)
        logger.info("wrote %s (%d frames of moving shapes)", out / name, frames)
    return EXIT_OK


def _checkpoint_check(args) -> int:
    from sam3_runtime.model import check_checkpoint

    report = check_checkpoint(args.path)
    sys.stdout.write(report.summary() + "\n")
    return EXIT_OK if report.ok else EXIT_USAGE


def _checkpoint_init(args) -> int:
    from sam3_runtime.model import write_random_checkpoint

    path = write_random_checkpoint(args.out_dir, seed=args.seed)
    logger.info("wrote a tiny randomly initialised checkpoint to %s (random weights: its outputs mean nothing)", path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
