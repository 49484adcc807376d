"""``sam3-stream run JOB.yaml``: a streaming job (or an index job) on Ray, from its job file.

From the command line the job runs under :mod:`pipeline.supervisor`, so that no process it starts
outlives it, Ray's included, however it ends (a normal end, SIGTERM, or SIGKILL of the command).
A SIGKILL is no graceful stop: ``--resume`` goes on from the last resume point.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    run = sub.add_parser("run", help="run a streaming job: video sources in, SAM 3 tracks out to Kafka and Parquet")
    run.add_argument("job", metavar="JOB.yaml")
    run.add_argument("--max-seconds", type=float, default=None, metavar="N", help="stop gracefully after N seconds")
    run.add_argument("--no-progress", action="store_true", help="no live progress table")
    run.add_argument("--resume", action="store_true",
                     help="carry each stream on from the checkpoint a previous run left beside its Parquet output")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from pipeline.supervisor import supervised

    return supervised(args, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from pipeline.jobspec import load_job

    job = load_job(args.job)
    if job.index is not None:  # an index job: incremental by itself, so --resume changes nothing
        from pipeline.index.run import run_index

        return run_index(job, job_path=args.job, show_progress=not args.no_progress,
                         max_seconds=args.max_seconds).exit_code
    from pipeline.driver import run_job  # Ray loads only for the command that needs it

    return run_job(args.job, max_seconds=args.max_seconds, show_progress=not args.no_progress,
                   resume=args.resume).exit_code
