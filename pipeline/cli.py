"""The ``sam3-stream`` command line: the parser and the dispatch; each command is a module of
:mod:`pipeline.commands`.

Exit codes (:class:`~pipeline.exit_codes.ExitCode`): 0 success, 2 bad arguments, input or
configuration (one clear line on stderr), 3 the work ran but part of it failed, 130 interrupted
twice (a second SIGINT/SIGTERM aborts without draining; one line, no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.commands import checkpoint, index, query, run, samples, segment, track
from pipeline.exit_codes import ExitCode

COMMANDS = (run, index, query, segment, track, samples, checkpoint)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors follow our one-line, exit-2 rule
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sam3-stream", description="SAM 3 segmentation and tracking at scale")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = sys.argv[1:] if argv is None else None  # `run` supervises its job only from a shell
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as e:  # UsageError, JobSpecError and bad input: one line, no traceback
        sys.stderr.write(f"sam3-stream: error: {e}\n")
        return ExitCode.USAGE
    except KeyboardInterrupt:  # a second signal (or one before the job could stop gracefully): the job cleaned up
        sys.stderr.write("sam3-stream: aborted without draining; what was not flushed is lost (run again with "
                         "--resume to go on from the last resume points)\n")
        return ExitCode.ABORTED


if __name__ == "__main__":
    sys.exit(main())
