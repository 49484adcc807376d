"""``sam3-stream index SOURCE... --out DATASET``: index a video archive, each file on its own.

The arguments make the same ``index:`` job section a job file holds (so
``sam3-stream run JOB.yaml`` and ``ray job submit`` index the same way); they are checked by the
same validation, and an error names the option at fault.
"""

from __future__ import annotations

import argparse
import logging
import os

import yaml

from pipeline.commands.args import UsageError

logger = logging.getLogger(__name__)


def register(sub) -> None:
    index = sub.add_parser("index", help="index a video archive into a dataset of tracks, clips and a file catalog",
                           description="Index every video file the sources name; a re-run does only what changed.")
    index.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="file, directory, glob, manifest (.txt/.csv/.parquet) or s3://bucket/prefix/")
    index.add_argument("--out", required=True, metavar="DATASET", help="dataset directory or s3:// URI")
    concepts = index.add_mutually_exclusive_group(required=True)
    concepts.add_argument("--concept", action="append", metavar="TEXT", help="a concept to index (repeatable)")
    concepts.add_argument("--watchlist", metavar="FILE", help="a watchlist file (a YAML list of rules)")
    index.add_argument("--checkpoint", default="facebook/sam3",
                       help="hub repo id, local directory or .pt/.safetensors file (default facebook/sam3)")
    index.add_argument("--device", default="auto", help="auto | cpu | cuda")
    index.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    index.add_argument("--fps", type=float, default=None, metavar="N", help="frames per second to sample (default: all)")
    index.add_argument("--engines", type=int, default=1, metavar="N", help="engine actors (one per GPU; default 1)")
    index.add_argument("--compile", action="store_true",
                       help="torch.compile the engines' backbone and tracker step (engine.compile; slow first steps)")
    index.add_argument("--files-in-flight", type=int, default=None, metavar="N",
                       help="files each engine works on at once (default 2 x its max batch)")
    index.add_argument("--force", action="store_true", help="index every file again, whatever the catalog says")
    index.add_argument("--retry-failed", action="store_true", help="index again the files that failed before")
    index.add_argument("--name", default="index", help="job name (names the actors and the records' job field)")
    index.add_argument("--max-seconds", type=float, default=None, metavar="N", help="stop after N seconds")
    index.add_argument("--no-progress", action="store_true", help="no live progress display")
    index.set_defaults(handler=index_command)


def job_document(args: argparse.Namespace) -> dict:
    """The job file the arguments stand for."""
    watchlist = args.watchlist if args.watchlist else [{"concept": c} for c in args.concept]
    if isinstance(watchlist, str) and "/" not in watchlist and not watchlist.endswith((".yaml", ".yml")):
        watchlist = os.path.join(".", watchlist)  # a file argument is a path, never a watchlist name
    index = {"sources": list(args.sources), "out": args.out, "watchlist": "index", "force": args.force,
             "retry_failed": args.retry_failed}
    if args.fps is not None:
        index["fps"] = args.fps
    if args.files_in_flight is not None:
        index["files_in_flight"] = args.files_in_flight
    return {"name": args.name, "model": {"checkpoint": args.checkpoint, "device": args.device, "dtype": args.dtype},
            "engine": {"replicas": args.engines, "compile": args.compile}, "watchlists": {"index": watchlist},
            "index": index}


_OPTIONS = {"index.sources": "SOURCE", "index.out": "--out", "index.fps": "--fps", "engine.replicas": "--engines",
            "engine.compile": "--compile",
            "index.files_in_flight": "--files-in-flight", "model.checkpoint": "--checkpoint",
            "model.device": "--device", "model.dtype": "--dtype", "watchlists.index": "--concept/--watchlist",
            "name": "--name"}


def index_command(args: argparse.Namespace) -> int:
    from pipeline.supervisor import supervised

    return supervised(args, lambda: _index(args))


def _index(args: argparse.Namespace) -> int:
    from pipeline.index.run import run_index
    from pipeline.jobspec import JobSpecError, parse_job

    text = yaml.safe_dump(job_document(args), sort_keys=False)
    try:
        job = parse_job(text, filename="sam3-stream index")
    except JobSpecError as e:
        field = ".".join(str(p) for p in e.path[:2])
        option = next((o for f, o in _OPTIONS.items() if field.startswith(f)), None)
        raise UsageError(f"{option}: {e.problem}" if option else str(e)) from None
    return run_index(job, job_path="sam3-stream index", show_progress=not args.no_progress,
                     max_seconds=args.max_seconds).exit_code
