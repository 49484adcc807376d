"""Output sinks for track observations and events: Kafka topics and a Parquet dataset.

Both sinks take lists of :class:`~operators.records.TrackObservation` and
:class:`~operators.records.Event` (``write_tracks`` / ``write_events``), buffer them, and
report delivery problems as :class:`SinkError` from ``flush()`` / ``close()``; the caller
decides whether that fails the stream. The sink classes are imported lazily so that using one
does not import the other's dependencies (kafka-python, pyarrow.parquet).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from operators.sinks.kafka_sink import KafkaSink
    from operators.sinks.parquet_sink import ParquetSink

__all__ = ["KafkaSink", "ParquetSink", "SinkError"]


class SinkError(RuntimeError):
    """Records could not be delivered; ``failed`` counts them, ``reasons`` maps each cause to a count."""

    def __init__(self, message: str, *, failed: int = 0, reasons: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.failed = failed
        self.reasons = dict(reasons or {})


class ClosingSink:
    """Context-manager behaviour shared by the sinks: ``close()`` on exit; when an exception is
    already on its way out, a ``SinkError`` from closing is logged instead of hiding it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except SinkError as sink_exc:
            logging.getLogger(type(self).__module__).error("%s closed with failures: %s", type(self).__name__, sink_exc)


_LAZY = {
    "KafkaSink": "operators.sinks.kafka_sink",
    "ParquetSink": "operators.sinks.parquet_sink",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
