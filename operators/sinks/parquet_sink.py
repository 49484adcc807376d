"""Write track observations and events as a Hive-partitioned Parquet dataset.

Layout under ``path``::

    tracks/stream_id=<id>/part-<stream>-<seq>-<uuid>.parquet
    events/stream_id=<id>/part-<stream>-<seq>-<uuid>.parquet

``<id>`` is URI-encoded (``cam/1`` becomes ``cam%2F1``), as Hive and pyarrow expect. The
``stream_id`` column lives in the directory name only, so readers must enable Hive
partitioning: ``pyarrow.dataset.dataset(path / "tracks", partitioning="hive")``, DuckDB's
``read_parquet('path/tracks/**/*.parquet', hive_partitioning=true)``, or :func:`open_dataset`,
which also pins ``stream_id`` to a string. Both pyarrow's ``"hive"`` inference and DuckDB turn
ids that all look numeric (``7``, ``12``) into integers; in DuckDB add
``hive_types={'stream_id': VARCHAR}``. Both decode the URI-encoded directory names.

``path`` may also be an object-store URI (``s3://bucket/prefix``, ``gs://...``): every file
operation goes through :mod:`operators.storage`, with credentials and endpoint from the usual
environment variables.

Rows are buffered per stream and kind; a buffer becomes one file when it holds ``flush_rows``
rows or its oldest row is ``flush_seconds`` old (checked on every write and by
:meth:`ParquetSink.maybe_flush`). Each file is written under a temporary name starting with
``.`` in its final directory, synced, then renamed into place, so a reader never sees a partial
file (pyarrow skips names starting with ``.``/``_``; the ``.tmp`` suffix keeps them out of a
``*.parquet`` glob); on an object store each file is one all-or-nothing upload. Duplicates after a re-run are resolved by readers via ``event_id``.

Errors: a file that cannot be written raises :class:`~operators.sinks.SinkError` from the call
that triggered the write (``write_*``, ``maybe_flush``, ``flush``, ``close``); its rows stay
buffered, so a later flush retries them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from operators.records import EVENT_SCHEMA, SCHEMA_VERSION, TRACK_SCHEMA, Event, TrackObservation
from operators.sinks import ClosingSink, SinkError
from operators.storage import Location, StorageError, resolve

logger = logging.getLogger(__name__)

PARTITION_COLUMN = "stream_id"
SCHEMAS = {"tracks": TRACK_SCHEMA, "events": EVENT_SCHEMA}
_BODY_SCHEMAS = {kind: schema.remove(schema.get_field_index(PARTITION_COLUMN)) for kind, schema in SCHEMAS.items()}
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def partition_dir(stream_id: str) -> str:
    """The Hive directory name of a stream: ``stream_id=<URI-encoded id>``."""
    return f"{PARTITION_COLUMN}={urllib.parse.quote(stream_id, safe='')}"


def open_dataset(path: str | os.PathLike, kind: str = "tracks") -> ds.Dataset:
    """The ``tracks`` or ``events`` dataset under ``path`` (a local path or an object-store URI), with the
    records.py schema (stream_id a string)."""
    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}, got {kind!r}")
    location = resolve(path).join(kind)
    partitioning = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return ds.dataset(location.path, filesystem=location.fs, format="parquet", schema=SCHEMAS[kind],
                      partitioning=partitioning)


@dataclass
class _Buffer:
    rows: list[dict[str, Any]] = field(default_factory=list)
    oldest: float = 0.0  # time.monotonic() of the first buffered row


class ParquetSink(ClosingSink):
    """Buffered, atomic Parquet writer for one job's track observations and events.

    Counters (plain attributes, cumulative): ``rows_written``, ``files_written``.

    ``run`` names this writer's files apart from other runs' (``part-<stream>-<run>-<seq>-…``), so
    that ``rollback`` can take back exactly the files this run wrote after a resume point.
    """

    def __init__(self, path: str | os.PathLike, job: str, flush_rows: int = 10_000, flush_seconds: float = 5.0,
                 *, compression: str = "zstd", durable: bool = True, run: str | None = None) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be > 0, got {flush_seconds}")
        try:
            self.location: Location = resolve(path)
        except StorageError as exc:
            raise SinkError(f"Parquet sink: {exc}. Check sinks.parquet.path.") from exc
        self.path = self.location.uri  # as the job file named it, for messages
        self.job = job
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.compression = compression
        self.durable = durable  # on a local disk, fsync each file and its directory before counting it written
        if run is not None and not re.fullmatch(r"[A-Za-z0-9_]+", run):
            raise ValueError(f"run must be letters, digits and '_', got {run!r}")
        self.run = run
        self.rows_written = 0
        self.files_written = 0
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self._seq: dict[tuple[str, str], int] = {}
        self._lock = threading.RLock()
        self._closed = False
        try:
            self.location.make_dirs()
        except OSError as exc:
            raise SinkError(f"Parquet sink cannot create {self.path}: {exc}. Check sinks.parquet.path and its "
                            "permissions.") from exc

    def write_tracks(self, records: Sequence[TrackObservation]) -> None:
        self._write("tracks", records, TrackObservation)

    def write_events(self, events: Sequence[Event]) -> None:
        self._write("events", events, Event)

    def _write(self, kind: str, records: Sequence[Any], record_type: type) -> None:
        with self._lock:
            if self._closed:
                raise SinkError(f"Parquet sink for {self.path} is closed; create a new ParquetSink")
            for record in records:
                if not isinstance(record, record_type):
                    raise TypeError(f"Parquet sink: expected {record_type.__name__} for {kind}, "
                                    f"got {type(record).__name__}")
            now = time.monotonic()
            full = set()
            # Everything is buffered before any file is written, so a write error never loses
            # part of this call's records: they all stay buffered for the next flush.
            for record in records:
                key = (kind, record.stream_id)
                buffer = self._buffers.get(key)
                if buffer is None:
                    buffer = self._buffers[key] = _Buffer(oldest=now)
                buffer.rows.append(record.to_row())
                if len(buffer.rows) >= self.flush_rows:
                    full.add(key)
            for key in full:
                while key in self._buffers and len(self._buffers[key].rows) >= self.flush_rows:
                    self._flush_buffer(key, limit=self.flush_rows)
            self._flush_older_than(now - self.flush_seconds)

    def maybe_flush(self) -> None:
        """Write the buffers whose oldest row is at least ``flush_seconds`` old."""
        with self._lock:
            self._flush_older_than(time.monotonic() - self.flush_seconds)

    def _flush_older_than(self, cutoff: float) -> None:
        for key in [k for k, b in self._buffers.items() if b.oldest <= cutoff]:
            self._flush_buffer(key)

    def flush(self) -> None:
        """Write every buffered row; raises SinkError naming the files that could not be written."""
        with self._lock:
            self._flush_all()

    def _flush_all(self) -> None:
        errors = []
        for key in list(self._buffers):
            try:
                self._flush_buffer(key)
            except SinkError as exc:
                errors.append(exc)  # keep going: other streams' files may still be writable
        if errors:
            failed = sum(e.failed for e in errors)
            raise SinkError(f"Parquet sink: {failed} rows in {len(errors)} buffers could not be written "
                            f"(they stay buffered): {errors[0]}", failed=failed,
                            reasons={str(e): e.failed for e in errors})

    def _flush_buffer(self, key: tuple[str, str], limit: int | None = None) -> None:
        """Write the buffer's first ``limit`` rows (all by default) as one file."""
        buffer = self._buffers.get(key)
        if buffer is None or not buffer.rows:
            self._buffers.pop(key, None)
            return
        rows = buffer.rows if limit is None else buffer.rows[:limit]
        kind, stream_id = key
        seq = self._seq.get(key, 0)
        name = f"{self._file_prefix(stream_id)}{seq:06d}-{uuid.uuid4().hex}.parquet"
        directory = self.location.join(kind, partition_dir(stream_id))
        try:
            table = pa.Table.from_pylist(rows, schema=_BODY_SCHEMAS[kind])
            table = table.replace_schema_metadata({
                "sam3.job": self.job, "sam3.stream_id": stream_id, "sam3.schema_version": str(SCHEMA_VERSION),
            })
            directory.join(name).write_parquet(table, self.compression, sync=self.durable)
        except (OSError, pa.ArrowException) as exc:
            # a StorageError already names the file and says what to check
            detail = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
            raise SinkError(f"Parquet sink could not write {len(rows)} {kind} rows of stream {stream_id!r} "
                            f"to {directory.uri}: {detail}", failed=len(rows),
                            reasons={f"{type(exc).__name__}: {exc}": len(rows)}) from exc
        self._seq[key] = seq + 1
        # Rows left over keep the old `oldest`: that can only make their time flush come early.
        del buffer.rows[:len(rows)]
        if not buffer.rows:
            del self._buffers[key]
        self.rows_written += table.num_rows
        self.files_written += 1
        logger.debug("Parquet sink wrote %d %s rows to %s/%s", table.num_rows, kind, directory.uri, name)

    def _file_prefix(self, stream_id: str) -> str:
        run = f"{self.run}-" if self.run else ""
        return f"part-{_UNSAFE_NAME_CHARS.sub('_', stream_id)[:64]}-{run}"

    def sequence(self, stream_id: str) -> dict[str, int]:
        """How many files of each kind this sink has written for the stream (a rollback point)."""
        with self._lock:
            return {kind: self._seq.get((kind, stream_id), 0) for kind in _BODY_SCHEMAS}

    def rollback(self, stream_id: str, sequence: dict[str, int]) -> int:
        """Delete the stream's files this run wrote after ``sequence`` (from :meth:`sequence`), drop
        its buffered rows, and number on from there; returns the number of files deleted."""
        if self.run is None:
            raise ValueError("rollback needs a ParquetSink created with run=...: without it, files of other runs "
                             "cannot be told apart")
        deleted = 0
        with self._lock:
            prefix = self._file_prefix(stream_id)
            for kind in _BODY_SCHEMAS:
                keep = int(sequence.get(kind, 0))
                self._buffers.pop((kind, stream_id), None)
                self._seq[(kind, stream_id)] = keep
                directory = self.location.join(kind, partition_dir(stream_id))
                for info in directory.list(".parquet", recursive=False):
                    if not info.base_name.startswith(prefix):
                        continue
                    seq = info.base_name[len(prefix):].split("-", 1)[0]
                    if seq.isdigit() and int(seq) >= keep:
                        directory.child(info).delete()
                        deleted += 1
        if deleted:
            logger.info("Parquet sink: took back %d files of stream %s written after its resume point", deleted,
                        stream_id)
        return deleted

    @property
    def buffered_rows(self) -> int:
        with self._lock:
            return sum(len(b.rows) for b in self._buffers.values())

    def close(self) -> None:
        """Write everything still buffered; the sink is closed afterwards even if that fails."""
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_all()
            finally:
                self._closed = True

