"""Where the driver keeps each stream's latest resume point: in memory, and beside the Parquet dataset.

In memory, a resume point outlives the stream actor that took it (the actor is resumed from it).
On disk (``<sinks.parquet.path>/_checkpoints/<job>/<stream>.json``, written atomically) it
outlives the job: ``sam3-stream run JOB.yaml --resume`` carries every stream on from its last
resume point and skips the streams that had finished. Files sit beside the dataset because a
resume point is only meaningful together with the Parquet files it counts. The folder keeps its
first name, ``_checkpoints``, so that ``--resume`` finds what earlier versions wrote.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from pathlib import Path

from operators.resume_point import ResumePoint

logger = logging.getLogger(__name__)

RESUME_DIR_NAME = "_checkpoints"


def resume_dir(job) -> Path | None:
    """The job's folder of resume points, or None when it has no Parquet sink."""
    return None if job.sinks.parquet is None else Path(job.sinks.parquet.path) / RESUME_DIR_NAME / job.name


class ResumeStore:
    def __init__(self, directory: Path | None):
        self.directory = directory
        self._latest: dict[str, ResumePoint] = {}

    def get(self, stream_id: str) -> ResumePoint | None:
        return self._latest.get(stream_id)

    def put(self, point: ResumePoint) -> None:
        """Keep ``point`` as its stream's latest; a new one is also written to disk."""
        if self._latest.get(point.stream_id) == point:
            return
        self._latest[point.stream_id] = point
        if self.directory is None:
            return
        try:
            self._write(self._path(point.stream_id), point.to_json())
        except OSError as e:  # the job goes on; only a later --resume would start further back
            logger.error("stream %s: could not write its resume point to %s: %s", point.stream_id, self.directory, e)

    def load(self, stream_id: str) -> ResumePoint | None:
        """The resume point a previous run left on disk for the stream, if any."""
        if self.directory is None:
            return None
        path = self._path(stream_id)
        if not path.exists():
            return None
        try:
            point = ResumePoint.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: not a readable resume point of a stream ({e}); delete it to start the stream "
                             "from its beginning") from e
        self._latest[stream_id] = point
        return point

    def _path(self, stream_id: str) -> Path:
        return self.directory / f"{urllib.parse.quote(stream_id, safe='')}.json"

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
