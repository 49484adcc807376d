"""``index:``: index a video archive into a dataset, each file a work item spread over all engines.

``sam3-stream index SOURCE... --out DATASET --concept ...`` builds this same section, so an
index job also runs as ``sam3-stream run JOB.yaml`` and as a Ray job. Sources are files,
directories, globs, manifests (one URI per line, or CSV/Parquet with a ``uri`` column) and
object-store URIs (``s3://bucket/prefix/``); ``out`` is a local path or an object-store URI.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from pipeline.jobspec.common import Spec, base_dir, local_path
from pipeline.validation_errors import FieldProblem

_REMOTE = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://")
_LIVE = ("rtsp://", "rtsps://", "http://", "https://")


def _place(value: str, info: ValidationInfo) -> str:
    """An object-store URI as written; a local path made absolute against the job file's directory."""
    lowered = value.lower()
    if lowered.startswith(_REMOTE):
        return value
    if lowered.startswith("file://"):
        value = value[len("file://"):]
    return local_path(value, base_dir(info))


class IndexSpec(Spec):
    sources: list[str]  # after validation: object-store URIs as written, local paths absolute
    out: str  # the dataset root: a local path (absolute after validation) or an object-store URI
    watchlist: str  # a name under watchlists: (or a watchlist file, like a stream's)
    fps: float | None = Field(None, gt=0)  # sampling rate; None = every frame
    force: bool = False  # index every file again, whatever the catalog says
    retry_failed: bool = False  # index again the files whose last attempt failed
    files_in_flight: int | None = Field(None, ge=1)  # per engine; None: 2 x engine.max_batch

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value  # validation reports the type
        if not value:
            raise ValueError("no sources (list files, directories, globs, manifests or s3:// prefixes)")
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise FieldProblem((index,), "a source is a non-empty path or URI")
            item = item.strip()
            if item.lower().startswith(_LIVE):
                raise FieldProblem((index,), f"{item.split('://')[0]}:// is a live stream: index takes files and "
                                   "object-store URIs (put live streams under streams: and use sam3-stream run)")
            out.append(_place(item, info))
        return out

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("empty dataset location (a directory such as out/index, or s3://bucket/index)")
            return _place(value.strip(), info)
        return value
