"""The archive index dataset: its tables, their schemas, and where each file's rows live.

Layout under the dataset root (a local path or an object-store URI), one directory of Parquet
files per table, readable by DuckDB (``read_parquet('DATASET/tracks/*.parquet')``) or pyarrow::

    files/part-<run_id>-<seq>.parquet        the catalog: rows appended as files complete
    tracks/<part>.parquet                    per frame and track (records.TRACK_SCHEMA)
    track_summaries/<part>.parquet           per track (TRACK_SUMMARY_SCHEMA)
    events/<part>.parquet                    track and file events (records.EVENT_SCHEMA)

A *part* holds the rows of one pass over one file: ``<file key>-<pass key>``. The file key is
a hash of the file's URI; the pass key a hash of what decided the rows (the file's size, mtime
or etag, the model, the concepts of that pass). Doing the same pass again writes the same
names, so a pass that was interrupted after writing and redone never leaves a file's rows
twice. The catalog's ``parts`` column lists the parts that hold a file's current rows; a pass
over a changed file first deletes the parts its catalog row lists. Within a part, ``stream_id``
and ``source`` of every row are the file's URI as shown (secrets masked).

The latest catalog row of a URI (by ``indexed_at``) is its state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow as pa

from operators.records import EVENT_SCHEMA, TRACK_SCHEMA

FILES, TRACKS, TRACK_SUMMARIES, EVENTS = "files", "tracks", "track_summaries", "events"
TABLES = (FILES, TRACKS, TRACK_SUMMARIES, EVENTS)
PART_TABLES = (TRACKS, TRACK_SUMMARIES, EVENTS)  # written per part; ``files`` is appended per run

DONE, FAILED = "done", "failed"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_BOX = pa.list_(pa.float32(), 4)

FILES_SCHEMA = pa.schema([
    ("uri", pa.string()),  # as shown: secrets masked
    ("size_bytes", pa.int64()),
    ("mtime", _TIMESTAMP),  # null where the store gives none
    ("etag", pa.string()),  # null where the store gives none
    ("duration_s", pa.float64()),
    ("frames", pa.int64()),  # processed
    ("fps", pa.float64()),  # of the file as decoded
    ("status", pa.string()),  # done | failed
    ("error", pa.string()),
    ("concepts", pa.list_(pa.string())),  # every concept the file's rows cover
    ("checkpoint", pa.string()),  # the model identity the rows came from
    ("run_id", pa.string()),
    ("indexed_at", _TIMESTAMP),
    ("processing_s", pa.float64()),
    ("next_track_id", pa.int64()),  # where a later pass (a concept added) numbers its tracks on
    ("parts", pa.list_(pa.string())),  # the parts holding the file's current rows
])

TRACK_SUMMARY_SCHEMA = pa.schema([
    ("uri", pa.string()),
    ("track_id", pa.int64()),
    ("concept", pa.string()),
    ("start_pts_s", pa.float64()),
    ("end_pts_s", pa.float64()),
    ("duration_s", pa.float64()),
    ("start_frame", pa.int64()),
    ("end_frame", pa.int64()),
    ("observations", pa.int64()),
    ("max_score", pa.float32()),
    ("mean_score", pa.float32()),
    ("best_frame_index", pa.int64()),
    ("best_pts_s", pa.float64()),
    ("best_box_xyxy", _BOX),
    ("thumbnail_jpeg", pa.binary()),  # the object at its best frame, at most THUMBNAIL_PX a side
    ("model", pa.string()),
    ("run_id", pa.string()),
])

THUMBNAIL_PX = 128

SCHEMAS = {FILES: FILES_SCHEMA, TRACKS: TRACK_SCHEMA, TRACK_SUMMARIES: TRACK_SUMMARY_SCHEMA, EVENTS: EVENT_SCHEMA}


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def file_key(uri: str) -> str:
    """The part-name prefix of every part of one file."""
    return _digest(uri)[:16]


def part_name(uri: str, fingerprint: str, checkpoint: str, concepts: Iterable[str]) -> str:
    """The name of one pass's part: the same pass always gets the same name."""
    return f"{file_key(uri)}-{_digest(fingerprint, checkpoint, *sorted(concepts))[:12]}"


def part_file(table: str, part: str) -> str:
    """A part's file, relative to the dataset root."""
    if table not in PART_TABLES:
        raise ValueError(f"{table!r} is not a per-part table; one of {', '.join(PART_TABLES)}")
    return f"{table}/{part}.parquet"
