"""The index catalog (the dataset's ``files`` table) and the plan of a run: what each file needs.

The catalog is append-only: every finished or failed file adds a row, and the latest row of a URI
(by ``indexed_at``) is its state. A run appends its rows as whole files
(``files/part-<run_id>-<seq>.parquet``, see :mod:`operators.index_tables`), so a reader never sees
half a file and two runs never write the same name.

Planning compares each archive file with its latest row:

========================================  ===================  ==============================
the file                                  pass                 reason
========================================  ===================  ==============================
not in the catalog                        every concept        ``new``
``force``                                 every concept        ``forced``
size, mtime or etag differ from the row   every concept        ``changed``
failed last time                          skipped, counted     (``retry`` with retry_failed)
done with another checkpoint              every concept        ``checkpoint_changed``
done, the watchlist has new concepts      the new ones only    ``concepts_added``
done, nothing new (or concepts removed)   none                 up to date
========================================  ===================  ==============================

A full pass replaces the file's rows: the parts its row lists are stale (deleted before the pass
writes). A concepts-added pass keeps them and adds a part; its tracks are numbered from the row's
``next_track_id`` so a file's track ids stay unique across its parts. Rows of concepts removed from
the watchlist stay: removing a concept costs nothing, adding it back costs nothing either.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from operators.index_tables import DONE, FAILED, FILES, FILES_SCHEMA
from operators.redaction import redact_text, redact_url
from operators.storage import Location, StorageError
from pipeline.index.inputs import ArchiveFile

logger = logging.getLogger(__name__)

NEW, CHANGED, RETRY, CONCEPTS_ADDED, FORCED, CHECKPOINT_CHANGED = (
    "new", "changed", "retry", "concepts_added", "forced", "checkpoint_changed")
_SHOWN = {NEW: "new", CHANGED: "changed", RETRY: "retried", CONCEPTS_ADDED: "concepts added", FORCED: "forced",
          CHECKPOINT_CHANGED: "checkpoint changed"}


class Catalog:
    """The ``files`` table of a dataset: the latest row of each uri is its state."""

    def __init__(self, root: Location, latest: dict[str, dict] | None = None, names: Sequence[str] = ()) -> None:
        self.root = root
        self._latest: dict[str, dict] = dict(latest or {})
        self._names = set(names)  # file names in files/ seen so far: an append never reuses one
        self._next_seq: dict[str, int] = {}

    @classmethod
    def load(cls, root: Location) -> Catalog:
        """Read ``root/files/*.parquet``; no such files is an empty catalog."""
        directory = root.join(FILES)
        infos = directory.list(".parquet", recursive=False)
        if not infos:
            return cls(root)
        try:
            # one dataset over all parts: read in parallel, however many small append files there are
            table = pads.dataset([i.path for i in infos], schema=FILES_SCHEMA, format="parquet",
                                 filesystem=directory.fs).to_table()
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"{directory.uri}: the catalog cannot be read ({' '.join(str(e).split())}); check "
                               "that its files are the index's Parquet files and readable") from e
        return cls(root, _latest_rows(table), [i.base_name for i in infos])

    def latest(self, uri: str) -> dict | None:
        """The state of a file (by its shown uri; a full one is masked first): its latest row."""
        return self._latest.get(redact_url(uri))

    def __len__(self) -> int:
        return len(self._latest)

    def __contains__(self, uri: str) -> bool:
        return self.latest(uri) is not None

    def uris(self) -> list[str]:
        return sorted(self._latest)

    def append(self, rows: Sequence[dict], run_id: str) -> None:
        """Write ``rows`` (FILES_SCHEMA dicts) as one new file ``files/part-<run_id>-<seq>.parquet``,
        atomically. ``seq`` counts up and never lands on an existing file of that run, so a continued
        run with the same run_id adds to it instead of overwriting it. Updates :meth:`latest`."""
        if not rows:
            return
        try:
            table = pa.Table.from_pylist(list(rows), schema=FILES_SCHEMA)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise ValueError(f"catalog rows do not fit operators.index_tables.FILES_SCHEMA: {e}; build them "
                             "with pipeline.index.catalog.catalog_row") from e
        directory = self.root.join(FILES)
        prefix = f"part-{run_id}-"
        if run_id not in self._next_seq:
            self._names.update(i.base_name for i in directory.list(".parquet", recursive=False))
            seqs = [int(n[len(prefix):-len(".parquet")]) for n in self._names
                    if n.startswith(prefix) and n[len(prefix):-len(".parquet")].isdigit()]
            self._next_seq[run_id] = max(seqs, default=-1) + 1
        while True:
            name = f"{prefix}{self._next_seq[run_id]:06d}.parquet"
            self._next_seq[run_id] += 1
            target = directory.join(name)
            if name not in self._names and not target.exists():
                break
        directory.make_dirs()
        target.write_parquet(table)
        self._names.add(name)
        for row in table.to_pylist():  # as load() reads them back: timestamps tz-aware, lists as lists
            current = self._latest.get(row["uri"])
            if current is None or row["indexed_at"] >= current["indexed_at"]:
                self._latest[row["uri"]] = row
        logger.debug("catalog: %d row(s) in %s", len(rows), target.uri)


def _latest_rows(table: pa.Table) -> dict[str, dict]:
    """The row of greatest ``indexed_at`` of each uri (ties: the one read last), without a Python loop
    over all rows: sort, keep the last row of each run of equal uris."""
    table = table.filter(pc.is_valid(table["uri"]))
    if table.num_rows == 0:
        return {}
    # a row without indexed_at (not one this module writes) counts as the oldest, on any pyarrow version
    at = pc.fill_null(table["indexed_at"], pa.scalar(0, type=table.schema.field("indexed_at").type))
    order = pc.sort_indices(pa.table({"uri": table["uri"], "at": at}), sort_keys=[("uri", "ascending"),
                                                                                 ("at", "ascending")])
    table = table.take(order)
    uris = table["uri"].combine_chunks()
    last = pc.not_equal(uris.slice(0, len(uris) - 1), uris.slice(1))
    keep = pa.concat_arrays([last, pa.array([True])])
    return {row["uri"]: row for row in table.filter(keep).to_pylist()}


@dataclass(frozen=True)
class WorkItem:
    file: ArchiveFile
    concepts: tuple[str, ...]  # concepts this pass runs
    all_concepts: tuple[str, ...]  # concepts the file's rows cover once the pass is done
    stale_parts: tuple[str, ...]  # parts to delete before writing (their rows are replaced)
    keep_parts: tuple[str, ...]  # parts that stay (rows of concepts not re-run)
    first_track_id: int  # this pass numbers its tracks from here (0, or the catalog's next_track_id)
    reason: str  # new | changed | retry | concepts_added | forced | checkpoint_changed

    @property
    def kept_concepts(self) -> tuple[str, ...]:
        """The concepts the kept parts cover (none for a full pass)."""
        return tuple(c for c in self.all_concepts if c not in self.concepts)


@dataclass(frozen=True)
class Plan:
    items: list[WorkItem]
    up_to_date: int  # files with nothing to do
    failed_skipped: int  # failed before, not retried without retry_failed

    def counts(self) -> dict[str, int]:
        """Work items per reason."""
        return dict(Counter(item.reason for item in self.items))

    def summary(self) -> str:
        """One line: what this run does, e.g. "3 new, 1 changed, 994 up to date, 1 failed (use --retry-failed)"."""
        counts = self.counts()
        parts = [f"{counts[r]} {shown}" for r, shown in _SHOWN.items() if counts.get(r)]
        if self.up_to_date or not (parts or self.failed_skipped):
            parts.append(f"{self.up_to_date} up to date")
        if self.failed_skipped:
            parts.append(f"{self.failed_skipped} failed (use --retry-failed)")
        return ", ".join(parts)


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _same_content(file: ArchiveFile, row: dict) -> bool:
    return (file.size_bytes == row["size_bytes"] and file.mtime == row["mtime"]
            and (file.etag or None) == (row["etag"] or None))


def plan_work(files: Sequence[ArchiveFile], catalog: Catalog, concepts: Sequence[str], checkpoint: str,
              *, force: bool = False, retry_failed: bool = False) -> Plan:
    """What each file needs against the catalog (the table in the module docstring)."""
    wanted = _unique(concepts)
    if not wanted:
        raise ValueError("no concepts to index: give --concept TEXT or a --watchlist file with concepts")
    items: list[WorkItem] = []
    up_to_date = failed_skipped = 0

    def full(file: ArchiveFile, reason: str, stale: tuple[str, ...] = ()) -> None:
        items.append(WorkItem(file, wanted, wanted, stale, (), 0, reason))

    for file in files:
        row = catalog.latest(file.shown_uri)
        if row is None:
            full(file, NEW)
            continue
        parts = tuple(row["parts"] or ())
        if force:
            full(file, FORCED, parts)
        elif not _same_content(file, row):
            full(file, CHANGED, parts)
        elif row["status"] != DONE:
            if retry_failed:
                full(file, RETRY, parts)
            else:
                failed_skipped += 1
        elif row["checkpoint"] != checkpoint:
            full(file, CHECKPOINT_CHANGED, parts)
        else:
            have = tuple(row["concepts"] or ())
            missing = tuple(c for c in wanted if c not in have)
            if missing:
                items.append(WorkItem(file, missing, have + missing, (), parts, int(row["next_track_id"] or 0),
                                      CONCEPTS_ADDED))
            else:
                up_to_date += 1
    return Plan(items, up_to_date, failed_skipped)


def catalog_row(item: WorkItem, *, status: str, error: str | None, duration_s: float | None, frames: int | None,
                fps: float | None, checkpoint: str, run_id: str, processing_s: float | None, next_track_id: int,
                parts: Sequence[str]) -> dict:
    """The catalog row (FILES_SCHEMA) of one finished pass; ``indexed_at`` is now (UTC).

    ``done``: ``parts`` are the parts the pass wrote; the row lists them after the kept ones and
    covers every concept of ``item.all_concepts``.

    ``failed``: the row must still describe what is in the dataset, so that the next pass can clean
    up after it. Its concepts are those of the kept parts only (``item.kept_concepts``: the earlier
    concepts for a concepts-added pass, whose rows stay valid; none for a full pass, whose old rows
    were to be replaced) and ``next_track_id`` is ``item.first_track_id``. Its parts are every part
    that may still hold rows of the file: the kept ones, the stale ones (the pass may have failed
    before deleting them; deleting a part that is gone is no error) and ``parts``, what the pass may
    have written before it failed. A failed row is retried as a full pass with all of these stale, so
    no rows of the file are left behind or counted twice.
    """
    if status not in (DONE, FAILED):
        raise ValueError(f"catalog status {status!r}: use {DONE!r} or {FAILED!r}")
    if status == DONE:
        concepts, all_parts, next_id = item.all_concepts, _unique([*item.keep_parts, *parts]), next_track_id
    else:
        concepts = item.kept_concepts
        all_parts = _unique([*item.keep_parts, *item.stale_parts, *parts])
        next_id = item.first_track_id
    file = item.file
    return {
        "uri": file.shown_uri, "size_bytes": file.size_bytes, "mtime": file.mtime, "etag": file.etag,
        "duration_s": duration_s, "frames": frames, "fps": fps, "status": status,
        "error": redact_text(error, file.uri) if error else error,
        "concepts": list(concepts), "checkpoint": checkpoint, "run_id": run_id,
        "indexed_at": datetime.now(UTC), "processing_s": processing_s, "next_track_id": int(next_id),
        "parts": list(all_parts),
    }
