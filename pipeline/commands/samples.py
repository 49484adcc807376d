"""``sam3-stream samples [DIR]``: the synthetic clips the example jobs play."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.exit_codes import ExitCode

logger = logging.getLogger(__name__)


def register(sub) -> None:
    samples = sub.add_parser("samples", help="write the synthetic sample videos the example jobs use")
    samples.add_argument("out_dir", metavar="DIR", nargs="?", default="configs/examples/media")
    samples.set_defaults(handler=run_samples)


def run_samples(args: argparse.Namespace) -> int:
    from operators.synthetic import write_synthetic_video

    out = Path(args.out_dir)
    for name, frames in (("demo_a.mp4", 40), ("demo_b.mp4", 60)):
        write_synthetic_video(out / name, frames=frames, size=(160, 120), fps=10)
        logger.info("wrote %s (%d frames of moving shapes)", out / name, frames)
    return ExitCode.OK
