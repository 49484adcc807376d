"""What a stream must remember to carry on after its own process dies.

A ``StreamActor`` takes a checkpoint right after its sinks were flushed, so every output up to
``frame_index`` is durable. A stream restored from it skips the frames it already handled (file
sources) or continues the frame numbering (live sources), keeps its durable track ids and the
history of its live tracks, and re-links the objects its fresh engine session re-acquires. The
frames after the checkpoint that were handled before the crash are handled again: outputs are
at least once, and their event ids repeat so consumers can de-duplicate.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COUNTERS = ("frames_decoded", "frames_processed", "frames_dropped", "tracks", "records", "events", "reconnects",
            "engine_restarts")


@dataclass(frozen=True)
class StreamCheckpoint:
    stream_id: str
    frame_index: int  # the last frame whose outputs were flushed (-1: none yet)
    pts_s: float
    tracks: dict[str, Any]  # StreamTracks.state_dict()
    last_boxes: dict[int, tuple[str, tuple[float, float, float, float]]]  # durable id -> (concept, box)
    counters: dict[str, int] = field(default_factory=dict)  # the stream's totals at the checkpoint

    def to_json(self) -> str:
        data = asdict(self)
        data["last_boxes"] = {str(k): [c, list(b)] for k, (c, b) in self.last_boxes.items()}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StreamCheckpoint:
        data = json.loads(text)
        data["last_boxes"] = {int(k): (c, tuple(b)) for k, (c, b) in data["last_boxes"].items()}
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a reader sees the previous checkpoint or this one, never a torn file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> StreamCheckpoint:
        return cls.from_json(Path(path).read_text())
