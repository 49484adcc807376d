"""Per-(frame, object) track records and the files `sam3-stream track` writes them to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from operators.records import MASK_TYPE
from sam3_runtime.video.types import FrameResult

TRACK_SCHEMA = pa.schema([
    ("frame_index", pa.int64()),
    ("pts_s", pa.float64()),
    ("track_id", pa.int64()),
    ("concept", pa.string()),
    ("score", pa.float32()),
    ("tracker_score", pa.float32()),
    ("tentative", pa.bool_()),
    ("box_xyxy", pa.list_(pa.float32(), 4)),
    ("mask", MASK_TYPE),
    ("area_px", pa.int64()),
])


def frame_records(result: FrameResult, pts_s: float | None, frame_index: int | None = None) -> list[dict[str, Any]]:
    """One record per object of a frame, masks as COCO compressed RLE."""
    if not result.objects:
        return []
    index = result.frame_index if frame_index is None else frame_index
    return [
        {
            "frame_index": index,
            "pts_s": pts_s,
            "track_id": o.track_id,
            "concept": o.concept,
            "score": round(o.score, 6),
            "tracker_score": round(o.tracker_score, 6),
            "tentative": o.tentative,
            "box_xyxy": [round(v, 2) for v in o.box_xyxy],
            "mask": dict(o.rle()),
            "area_px": o.area_px,
        }
        for o in result.objects
    ]


class TrackRecordWriter:
    """Writes records to ``.jsonl`` (one JSON object per line) or ``.parquet``, chosen by suffix.

    Parquet rows are buffered and written in row groups; the file appears under its final name
    only when ``close`` succeeds (temp file + rename), so a reader never sees half a file.
    """

    def __init__(self, path: str | Path, row_group_size: int = 4096):
        self.path = Path(path)
        if self.path.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"--out {self.path}: use a .jsonl or .parquet file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._row_group_size = row_group_size
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        if self.path.suffix == ".jsonl":
            self._jsonl = self._tmp.open("w")
            self._parquet = None
        else:
            self._jsonl = None
            self._parquet = pq.ParquetWriter(str(self._tmp), TRACK_SCHEMA)

    def write(self, records: list[dict[str, Any]]) -> None:
        if self._jsonl is not None:
            for r in records:
                self._jsonl.write(json.dumps(r) + "\n")
        else:
            self._buffer.extend(records)
            if len(self._buffer) >= self._row_group_size:
                self._flush()
        self.rows_written += len(records)

    def _flush(self) -> None:
        if self._buffer:
            self._parquet.write_table(pa.Table.from_pylist(self._buffer, schema=TRACK_SCHEMA))
            self._buffer = []

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        else:
            self._flush()
            self._parquet.close()
        self._tmp.replace(self.path)

    def __enter__(self) -> TrackRecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
