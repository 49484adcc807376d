"""``sam3-stream query DATASET CONCEPT``: the clips of a concept in an archive index, and SQL over its tables.

Results go to stdout as a table, JSON (one array, nothing else on stdout) or CSV; what was
written (clips, thumbnails) is logged on stderr. With ``--export-clips`` and ``--thumbnails``
each result also names the file written for it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
import re
import sys
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.commands.args import UsageError
from pipeline.exit_codes import ExitCode

logger = logging.getLogger(__name__)

FORMATS = ("table", "json", "csv")


def register(sub) -> None:
    query = sub.add_parser("query", help="find clips of a concept in an archive index, or run SQL over it")
    query.add_argument("dataset", metavar="DATASET", help="the index dataset: a local path or s3://bucket/prefix")
    query.add_argument("concept", metavar="CONCEPT", nargs="?", help="the concept (exact, case-insensitive)")
    query.add_argument("--min-seconds", type=float, default=0.0, metavar="S", help="shortest track to list (default 0)")
    query.add_argument("--min-score", type=float, default=0.0, metavar="X", help="lowest best score to list (default 0)")
    query.add_argument("--format", choices=FORMATS, default="table", help="how results are printed (default table)")
    query.add_argument("--export-clips", metavar="DIR", help="cut each clip from its video into DIR (no re-encoding)")
    query.add_argument("--thumbnails", metavar="DIR", help="write each clip's thumbnail JPEG into DIR")
    query.add_argument("--sql", metavar="QUERY", help="run QUERY over the views files, catalog, tracks, "
                       "track_summaries and events instead of listing clips")
    query.add_argument("--limit", type=int, default=None, metavar="N", help="at most N results")
    query.set_defaults(handler=run_query)


def run_query(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow as pa

    from operators.storage import StorageError

    _check_args(args)
    try:
        if args.sql is not None:
            columns, rows = _run_sql(args)
            _print(columns, rows, args.format)
            return ExitCode.OK
        return _list_clips(args)
    except (StorageError, duckdb.Error, pa.ArrowException) as e:
        raise UsageError(f"{args.dataset}: {_one_line(str(e))}") from e


def _check_args(args: argparse.Namespace) -> None:
    if args.sql is None and not args.concept:
        raise UsageError("query: give a CONCEPT to list its clips, or --sql QUERY")
    if args.sql is not None and (args.export_clips or args.thumbnails):
        raise UsageError("--export-clips and --thumbnails go with a CONCEPT, not with --sql")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {args.limit}")


def _run_sql(args: argparse.Namespace) -> tuple[list[str], list[tuple]]:
    import duckdb

    from pipeline.index.query import open_views

    con = open_views(args.dataset)
    try:
        result = con.execute(args.sql)
    except duckdb.Error as e:
        raise UsageError(f"--sql: {_one_line(str(e))}") from e
    if result.description is None:  # a statement without a result, such as CREATE VIEW
        return [], []
    columns = [d[0] for d in result.description]
    rows = result.fetchall() if args.limit is None else result.fetchmany(args.limit)
    return columns, rows


def _list_clips(args: argparse.Namespace) -> int:
    from pipeline.index.query import find_clips, open_views

    con = open_views(args.dataset)
    clips = find_clips(con, args.concept, args.min_seconds, args.min_score, args.limit)
    columns = ["uri", "track_id", "concept", "start_s", "end_s", "duration_s", "score"]
    rows = [[c.uri, c.track_id, c.concept, c.start_s, c.end_s, c.duration_s, c.score] for c in clips]
    failed = 0
    if args.export_clips:
        columns.append("clip")
        paths, failed = _export_clips(clips, Path(args.export_clips))
        for row, path in zip(rows, paths, strict=True):
            row.append(str(path) if path else None)
    if args.thumbnails:
        columns.append("thumbnail")
        for row, path in zip(rows, _write_thumbnails(con, clips, Path(args.thumbnails)), strict=True):
            row.append(str(path) if path else None)
    _print(columns, [tuple(r) for r in rows], args.format)
    if not clips:
        logger.info("no clip of %r matches (min %.1f s, min score %.2f)", args.concept, args.min_seconds,
                    args.min_score)
    return ExitCode.PARTIAL if failed else ExitCode.OK


def clip_stem(clip) -> str:
    """``<file stem>-track<id>-<concept slug>-<start ms>``: the name of a clip's files."""
    stem = Path(clip.uri.rstrip("/").rsplit("/", 1)[-1]).stem or "clip"
    slug = re.sub(r"[^a-z0-9]+", "-", clip.concept.lower()).strip("-") or "concept"
    return f"{stem}-track{clip.track_id}-{slug}-{round(clip.start_s * 1000)}"


def _export_clips(clips, out_dir: Path) -> tuple[list[Path | None], int]:
    from operators.clip_export import ClipExportError, export_clip
    from operators.storage import StorageError

    paths: list[Path | None] = []
    for clip in clips:
        target = out_dir / f"{clip_stem(clip)}.mp4"
        try:
            export_clip(clip.uri, clip.start_s, clip.end_s, target)
        except (ClipExportError, StorageError, OSError) as e:  # one bad source must not lose the other clips
            logger.error("%s track %d: clip not exported: %s", clip.uri, clip.track_id, _one_line(str(e)))
            paths.append(None)
            continue
        logger.info("wrote %s", target)
        paths.append(target)
    return paths, paths.count(None)


def _write_thumbnails(con, clips, out_dir: Path) -> list[Path | None]:
    from pipeline.index.query import thumbnail

    paths: list[Path | None] = []
    for clip in clips:
        jpeg = thumbnail(con, clip)
        if jpeg is None:
            logger.info("%s track %d has no thumbnail in the index", clip.uri, clip.track_id)
            paths.append(None)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{clip_stem(clip)}.jpg"
        target.write_bytes(jpeg)
        logger.info("wrote %s", target)
        paths.append(target)
    return paths


def _print(columns: list[str], rows: list[tuple], fmt: str) -> None:
    if fmt == "json":
        records = [{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        sys.stdout.write(json.dumps(records) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in row] for row in rows])
    else:
        _print_table(columns, rows)


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not console.is_terminal:  # piped or captured: no wrapping, so each row stays on one line
        console = Console(width=100_000)
    table = Table(*columns)
    for row in rows:
        table.add_row(*(Text(_text(v)) for v in row))  # Text: no markup
    console.print(table)


def _plain(value: Any) -> Any:
    """A value as JSON can hold it: times as ISO 8601, binary as base64."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _cell(value: Any) -> str:
    plain = _plain(value)
    if plain is None:
        return ""
    return json.dumps(plain) if isinstance(plain, (dict, list)) else str(plain)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    return _cell(value)


def _one_line(message: str) -> str:
    """DuckDB and Arrow messages span lines (a caret under the query); one line keeps the error rule."""
    lines = [line.strip() for line in message.splitlines()]
    return "; ".join(line for line in lines if line and set(line) != {"^"})
