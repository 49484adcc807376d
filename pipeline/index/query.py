"""Querying an archive index dataset with DuckDB: views over its tables, and clips of a concept.

:func:`open_views` gives a DuckDB connection with one view per table of the dataset
(:mod:`operators.index_tables`), read through pyarrow datasets so that local paths and object
stores (``s3://``, credentials from the usual environment) work alike:

- ``files``: every catalog row ever appended;
- ``catalog``: the latest ``files`` row of each URI (by ``indexed_at``), which is its state;
- ``tracks``, ``track_summaries``, ``events``: the *current* rows only, that is the rows of the
  parts listed by a ``done`` catalog row. Parts left behind by an older pass over a changed
  file, and the rows of files whose latest pass failed, are not in them.

A table directory that does not exist yet reads as an empty view with the table's schema.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

import duckdb
import pyarrow.dataset as ds

from operators.index_tables import DONE, FILES, PART_TABLES, SCHEMAS, TABLES, TRACK_SUMMARIES
from operators.storage import Location, StorageError, resolve

logger = logging.getLogger(__name__)

CATALOG = "catalog"
VIEWS = (*TABLES, CATALOG)


class QueryError(ValueError):
    """Bad input to a query (a missing dataset, an unknown concept); one line that says what to do."""


@dataclass(frozen=True)
class Clip:
    """One track of a concept in one file: where it starts and ends (seconds of the file) and its best score."""

    uri: str
    track_id: int
    concept: str
    start_s: float
    end_s: float
    duration_s: float
    score: float


def open_views(dataset_uri: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``files``, ``catalog``, ``tracks``, ``track_summaries`` and ``events``."""
    root = resolve(dataset_uri)
    if not root.is_dir():
        where = root.path if root.is_local else root.uri
        raise QueryError(f"{dataset_uri}: no index dataset there; expected a directory (or object-store prefix) "
                         f"{where} written by 'sam3-stream index', holding {', '.join(t + '/' for t in TABLES)}")
    con = duckdb.connect()
    con.register(FILES, _dataset(root, FILES, None))
    con.execute(f"""CREATE VIEW {CATALOG} AS SELECT * FROM {FILES}
                    QUALIFY row_number() OVER (PARTITION BY uri ORDER BY indexed_at DESC) = 1""")
    current = {p for (p,) in con.execute(
        f"SELECT DISTINCT unnest(parts) FROM {CATALOG} WHERE status = ? AND parts IS NOT NULL", [DONE]).fetchall()}
    for table in PART_TABLES:
        con.register(table, _dataset(root, table, current))
    logger.debug("%s: %d current parts", dataset_uri, len(current))
    return con


def _dataset(root: Location, table: str, parts: set[str] | None) -> ds.Dataset:
    """The table's Parquet files as one dataset; with ``parts``, only the files of those parts."""
    directory = root.join(table)
    try:
        files = directory.list(".parquet")
    except StorageError as e:
        raise QueryError(str(e)) from e
    if parts is not None:
        files = [f for f in files if f.base_name.removesuffix(".parquet") in parts]
    return ds.dataset([f.path for f in files], schema=SCHEMAS[table], format="parquet", filesystem=root.fs)


def concepts(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every concept the dataset covers: those its done files were indexed for, and those of its tracks."""
    rows = con.execute(f"""SELECT DISTINCT c FROM (
                             SELECT unnest(concepts) AS c FROM {CATALOG} WHERE status = ?
                             UNION SELECT concept FROM {TRACK_SUMMARIES}) WHERE c IS NOT NULL ORDER BY c""",
                       [DONE]).fetchall()
    return [c for (c,) in rows]


def find_clips(con: duckdb.DuckDBPyConnection, concept: str, min_seconds: float = 0.0, min_score: float = 0.0,
               limit: int | None = None) -> list[Clip]:
    """The tracks of ``concept`` (exact, case-insensitive) lasting at least ``min_seconds`` whose best score is at
    least ``min_score``, by file, then start time. An unknown concept is a :class:`QueryError` listing the known."""
    known = concepts(con)
    if concept.casefold() not in {k.casefold() for k in known}:
        raise QueryError(_unknown_concept(concept, known))
    if limit is not None and limit < 0:
        raise QueryError(f"--limit must be 0 or more, got {limit}")
    sql = f"""SELECT uri, track_id, concept, start_pts_s, end_pts_s, duration_s, max_score FROM {TRACK_SUMMARIES}
              WHERE lower(concept) = lower(?) AND duration_s >= ? AND max_score >= CAST(? AS FLOAT)
              ORDER BY uri, start_pts_s, track_id"""
    # the threshold as float32, like the scores: 0.7 as a double is above the 0.7 a float32 column holds
    params: list[object] = [concept, min_seconds, min_score]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [Clip(uri, int(track), name, float(start), float(end), float(duration), round(float(score), 4))
            for uri, track, name, start, end, duration, score in con.execute(sql, params).fetchall()]


def thumbnail(con: duckdb.DuckDBPyConnection, clip: Clip) -> bytes | None:
    """The JPEG of the clip's object at its best frame, where the index kept one."""
    row = con.execute(f"SELECT thumbnail_jpeg FROM {TRACK_SUMMARIES} WHERE uri = ? AND track_id = ? AND concept = ?",
                      [clip.uri, clip.track_id, clip.concept]).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


def _unknown_concept(concept: str, known: list[str]) -> str:
    if not known:
        return f"no concept {concept!r}: this dataset has no indexed concept yet (index files with 'sam3-stream index')"
    wanted = concept.casefold()
    closest = sorted(known, key=lambda k: -difflib.SequenceMatcher(None, wanted, k.casefold()).ratio())
    return f"no concept {concept!r} in this dataset; it has: {', '.join(closest)}"

