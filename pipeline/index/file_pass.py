"""One pass over one archive file: decode it, track its concepts on an engine, write its rows.

The rows of a pass become visible only when the pass completes: each table's rows are written
as one Parquet file under a name fixed by the pass (``operators.index_tables.part_name``), so
a pass redone after an interruption overwrites, never duplicates. A pass over a changed file
first deletes the parts its catalog row listed. A file that cannot be read or decoded gives a
``failed`` catalog row with its error; a stop request abandons the pass without writing
anything (the next run does the file again).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from operators.index_tables import (
    DONE,
    EVENTS,
    FAILED,
    PART_TABLES,
    TRACK_SUMMARIES,
    TRACK_SUMMARY_SCHEMA,
    TRACKS,
    part_file,
    part_name,
)
from operators.lifecycle import StreamTracks
from operators.records import EVENT_SCHEMA, TRACK_SCHEMA
from operators.redaction import redact_text
from operators.storage import Location
from operators.track_summaries import TrackSummaries
from pipeline.engine_link import EngineLink
from pipeline.index.catalog import WorkItem, catalog_row

logger = logging.getLogger(__name__)

_ROW_GROUP = 4096  # rows buffered before they are compressed into the part being built
_COPY_CHUNK = 8 << 20


class PassStopped(Exception):
    """The run is stopping: the pass was abandoned and wrote nothing."""


class _PartWriter:
    """One table's rows of a pass, compressed in memory as they come, written whole at the end."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._buffer = io.BytesIO()
        self._writer = pq.ParquetWriter(self._buffer, schema, compression="zstd")

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= _ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []

    def finish(self) -> bytes:
        self._flush()
        self._writer.close()
        return self._buffer.getvalue()


@contextlib.contextmanager
def local_copy(file) -> Iterator[str]:
    """A local path to decode ``file`` from: itself, or a temporary copy of an object-store file."""
    location = file.location()
    if location.is_local:
        yield location.path
        return
    suffix = os.path.splitext(location.path)[1]
    with tempfile.NamedTemporaryFile(prefix="sam3-index-", suffix=suffix) as tmp:
        with location.open_input() as src:
            shutil.copyfileobj(src, tmp, _COPY_CHUNK)
        tmp.flush()
        yield tmp.name


def run_pass(item: WorkItem, *, job, link: EngineLink, model_id: str, run_id: str, root: Location,
             stop: threading.Event, on_frame: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Index ``item``'s file with ``link``'s engine; returns its catalog row (``done`` or ``failed``).
    Raises :class:`PassStopped` when ``stop`` is set before the pass completed."""
    from operators.video_source import open_video

    started = time.monotonic()
    file, checkpoint = item.file, str(job.model.checkpoint)
    shown = file.shown_uri
    part = part_name(shown, file.fingerprint, checkpoint, item.concepts)
    for stale in item.stale_parts:  # a changed file's old rows go before its new ones are made
        for table in PART_TABLES:
            root.join(part_file(table, stale)).delete()
    facts: dict[str, Any] = {"duration_s": None, "frames": 0, "fps": None}

    def row(status: str, error: str | None, next_track_id: int, parts) -> dict[str, Any]:
        return catalog_row(item, status=status, error=error, checkpoint=checkpoint, run_id=run_id,
                           processing_s=time.monotonic() - started, next_track_id=next_track_id, parts=tuple(parts),
                           **facts)

    try:
        with local_copy(file) as path, open_video(path, fps=job.index.fps) as video:
            facts["fps"] = video.info.average_fps
            tracks, summaries, writers = _track_file(item, job, link, model_id, run_id, video, facts, stop, on_frame)
            if video.truncated:
                raise ValueError("the file ends before the length its header declares (a truncated copy?); "
                                 "replace it and run again with --retry-failed")
        for table, writer in writers.items():
            root.join(part_file(table, part)).write_bytes(writer.finish())
        return row(DONE, None, tracks.next_id, (part,))
    except PassStopped:
        raise
    except Exception as e:
        for table in PART_TABLES:  # a failure half way through writing leaves none of this pass's rows
            with contextlib.suppress(Exception):
                root.join(part_file(table, part)).delete()
        error = redact_text(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e), file.uri)
        logger.warning("%s: failed: %s", shown, error)
        return row(FAILED, error, item.first_track_id, (part,))


def _track_file(item: WorkItem, job, link: EngineLink, model_id: str, run_id: str, video, facts: dict,
                stop: threading.Event, on_frame: Callable[[], None]):
    shown = item.file.shown_uri
    rules = [r for r in job.index_rules() if r.concept in item.concepts]
    tracks = StreamTracks(job.name, shown, shown, model_id, rules, first_id=item.first_track_id)
    summaries = TrackSummaries(shown, model_id, run_id)
    writers = {TRACKS: _PartWriter(TRACK_SCHEMA), TRACK_SUMMARIES: _PartWriter(TRACK_SUMMARY_SCHEMA),
               EVENTS: _PartWriter(EVENT_SCHEMA)}
    now = lambda: datetime.now(UTC)  # noqa: E731
    writers[EVENTS].add([tracks.stream_start(0, now(), concepts=list(item.concepts), reason=item.reason).to_row()])
    last = (0, 0.0)

    def handle(collected) -> None:
        nonlocal last
        frame = collected.frame
        if collected.new_session:
            tracks.relink_by_boxes(collected.result.objects)
        observations, events = tracks.update(collected.result, frame.pts_s, now(), frame_index=frame.index)
        writers[TRACKS].add([o.to_row() for o in observations])
        writers[EVENTS].add([e.to_row() for e in events])
        summaries.add(observations, frame.image if observations else None)
        facts["frames"] += 1
        last = (frame.index, frame.pts_s)
        on_frame()

    link.open()
    try:
        for frame in video:
            if stop.is_set():
                raise PassStopped()
            link.send(frame)
            if link.full:
                handle(link.collect())
        while link.in_flight:
            handle(link.collect())
    finally:
        link.close()
    index, pts = last
    writers[EVENTS].add([e.to_row() for e in tracks.close(index, pts)])
    writers[EVENTS].add([tracks.stream_end(index, now(), pts_s=pts).to_row()])
    writers[TRACK_SUMMARIES].add(summaries.rows())
    declared = video.info.duration_s
    facts["duration_s"] = declared if declared is not None else (pts + (1 / facts["fps"] if facts["fps"] else 0.0))
    return tracks, summaries, writers
