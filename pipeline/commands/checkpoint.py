"""``sam3-stream checkpoint check|init-random``: inspect a checkpoint, or write a random one."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.exit_codes import ExitCode

logger = logging.getLogger(__name__)


def register(sub) -> None:
    ckpt = sub.add_parser("checkpoint", help="inspect or create checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", required=True, parser_class=type(ckpt))
    check = ckpt_sub.add_parser("check", help="map a checkpoint's keys onto the full-size model (no weights loaded)")
    check.add_argument("path", metavar="PATH",
                       help="checkpoint directory, .pt/.safetensors file, hub repo id or .tsv key list")
    check.set_defaults(handler=run_check)
    init = ckpt_sub.add_parser("init-random", help="write a randomly initialised checkpoint (for demos and tests)")
    init.add_argument("out_dir", metavar="DIR")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(handler=run_init_random)


def run_check(args: argparse.Namespace) -> int:
    from sam3_runtime.model import check_checkpoint

    report = check_checkpoint(args.path)
    sys.stdout.write(report.summary() + "\n")
    return ExitCode.OK if report.ok else ExitCode.USAGE


def run_init_random(args: argparse.Namespace) -> int:
    from sam3_runtime.model import write_random_checkpoint

    path = write_random_checkpoint(args.out_dir, seed=args.seed)
    logger.info("wrote a tiny randomly initialised checkpoint to %s (random weights: its outputs mean nothing)", path)
    return ExitCode.OK
