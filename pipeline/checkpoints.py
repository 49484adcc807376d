"""Where the driver keeps each stream's latest checkpoint: in memory, and beside the Parquet dataset.

In memory, a checkpoint outlives the stream actor that took it (the actor is restored from it).
On disk (``<sinks.parquet.path>/_checkpoints/<job>/<stream>.json``, written atomically) it
outlives the job: ``sam3-stream run JOB.yaml --resume`` carries every stream on from its last
checkpoint and skips the streams that had finished. Files sit beside the dataset because a
checkpoint is only meaningful together with the Parquet files it counts.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from pathlib import Path

from operators.stream_checkpoint import StreamCheckpoint

logger = logging.getLogger(__name__)


def checkpoint_dir(job) -> Path | None:
    """The job's checkpoint directory, or None when it has no Parquet sink."""
    return None if job.sinks.parquet is None else Path(job.sinks.parquet.path) / "_checkpoints" / job.name


class CheckpointStore:
    def __init__(self, directory: Path | None):
        self.directory = directory
        self._latest: dict[str, StreamCheckpoint] = {}

    def get(self, stream_id: str) -> StreamCheckpoint | None:
        return self._latest.get(stream_id)

    def put(self, checkpoint: StreamCheckpoint) -> None:
        """Keep ``checkpoint`` as its stream's latest; a new one is also written to disk."""
        if self._latest.get(checkpoint.stream_id) == checkpoint:
            return
        self._latest[checkpoint.stream_id] = checkpoint
        if self.directory is None:
            return
        try:
            self._write(self._path(checkpoint.stream_id), checkpoint.to_json())
        except OSError as e:  # the job goes on; only a later --resume would start further back
            logger.error("stream %s: could not write its checkpoint to %s: %s", checkpoint.stream_id, self.directory, e)

    def load(self, stream_id: str) -> StreamCheckpoint | None:
        """The checkpoint a previous run left on disk for the stream, if any."""
        if self.directory is None:
            return None
        path = self._path(stream_id)
        if not path.exists():
            return None
        try:
            checkpoint = StreamCheckpoint.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: not a readable stream checkpoint ({e}); delete it to start the stream "
                             "from its beginning") from e
        self._latest[stream_id] = checkpoint
        return checkpoint

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
