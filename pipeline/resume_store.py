"""Where the driver keeps each stream's latest resume point: in memory, and beside the Parquet dataset.

In memory, a resume point outlives the stream actor that took it (the actor is resumed from it).
Beside the dataset (``<sinks.parquet.path>/_checkpoints/<job>/<stream>.json``, on a local disk or in
an object store, written atomically through :mod:`operators.storage`) it outlives the job:
``sam3-stream run JOB.yaml --resume`` carries every stream on from its last resume point and skips
the streams that had finished. Files sit beside the dataset because a resume point is only
meaningful together with the Parquet files it counts. The folder keeps its first name,
``_checkpoints``, so that ``--resume`` finds what earlier versions wrote.
"""

from __future__ import annotations

import logging
import os
import urllib.parse

from operators.resume_point import ResumePoint
from operators.storage import Location, resolve

logger = logging.getLogger(__name__)

RESUME_DIR_NAME = "_checkpoints"


def resume_dir(job) -> Location | None:
    """The job's folder of resume points (local or in an object store), or None when it has no Parquet sink."""
    return None if job.sinks.parquet is None else resolve(job.sinks.parquet.path).join(RESUME_DIR_NAME, job.name)


class ResumeStore:
    def __init__(self, directory: Location | str | os.PathLike | None):
        self.directory = directory if directory is None or isinstance(directory, Location) else resolve(directory)
        self._latest: dict[str, ResumePoint] = {}

    def get(self, stream_id: str) -> ResumePoint | None:
        return self._latest.get(stream_id)

    def put(self, point: ResumePoint) -> None:
        """Keep ``point`` as its stream's latest; a new one is also written to its file."""
        if self._latest.get(point.stream_id) == point:
            return
        self._latest[point.stream_id] = point
        if self.directory is None:
            return
        try:
            self._file(point.stream_id).write_bytes(point.to_json().encode())  # atomic: a reader sees old or new
        except OSError as e:  # the job goes on; only a later --resume would start further back
            logger.error("stream %s: could not write its resume point to %s: %s", point.stream_id,
                         self.directory.uri, e)

    def load(self, stream_id: str) -> ResumePoint | None:
        """The resume point a previous run left for the stream, if any."""
        if self.directory is None:
            return None
        file = self._file(stream_id)
        try:
            text = file.read_bytes().decode()
        except FileNotFoundError:
            return None
        try:
            point = ResumePoint.from_json(text)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{file.uri}: not a readable resume point of a stream ({e}); delete it to start the "
                             "stream from its beginning") from e
        self._latest[stream_id] = point
        return point

    def _file(self, stream_id: str) -> Location:
        return self.directory.join(f"{urllib.parse.quote(stream_id, safe='')}.json")
