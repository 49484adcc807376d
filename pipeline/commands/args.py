"""Arguments more than one command takes, and the error that reports a bad one."""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """Bad arguments or input: reported in one line, exit code 2."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="facebook/sam3",
                        help="hub repo id, local directory or .pt/.safetensors file (default facebook/sam3)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")


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
