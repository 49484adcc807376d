"""The small job files the pipeline tests run, built as data and written with ``yaml.safe_dump``.

Building a dict instead of formatting a YAML template means a path, URL or ``${VAR}`` never needs
quoting by hand, and a test names only what it changes. The defaults are what most tests use: the
tiny random checkpoint on the CPU, one engine batching up to 2 frames, a ``shapes`` watchlist with
one rule, no metrics endpoint. Sinks are off unless ``parquet`` or ``kafka`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

WATCHLIST = "shapes"
RED_SQUARE = (("red square", 0.1),)  # the random model scores every concept alike: 0.1 publishes tracks


def streams_from(sources: Mapping[str, str | os.PathLike[str]], **options: Any) -> list[dict[str, Any]]:
    """One stream per ``id -> source``, on the ``shapes`` watchlist, each with ``options`` (``loop=True``, ...)."""
    return [{"id": sid, "source": source, "watchlist": WATCHLIST, **options} for sid, source in sources.items()]


def tiny_job(
    name: str,
    checkpoint: str | os.PathLike[str],
    streams: Sequence[Mapping[str, Any]],
    *,
    rules: Sequence[tuple[str, float]] = RED_SQUARE,
    parquet: str | os.PathLike[str] | None = None,
    parquet_flush_rows: int = 1000,
    kafka: str | None = None,
    max_batch: int = 2,
    metrics_port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The YAML text of a job. ``kafka`` is the bootstrap servers (topics ``tracks`` and ``events``);
    a metrics port is served on 127.0.0.1 only; ``extra`` is merged in last, key by key, for what
    one test alone sets (``{"engine": {"replicas": 2}}``, a Kafka ``client`` section, ...)."""
    sinks: dict[str, Any] = {}
    if parquet is not None:
        sinks["parquet"] = {"path": parquet, "flush_rows": parquet_flush_rows, "flush_seconds": 1}
    if kafka is not None:
        sinks["kafka"] = {"bootstrap_servers": kafka, "topic": "tracks", "events_topic": "events"}
    job: dict[str, Any] = {
        "name": name,
        "model": {"checkpoint": checkpoint, "device": "cpu"},
        "engine": {"replicas": 1, "max_batch": max_batch, "max_wait_ms": 10, "hotstart": "off"},
        "watchlists": {WATCHLIST: [{"concept": concept, "threshold": threshold} for concept, threshold in rules]},
        "streams": list(streams),
        "sinks": sinks,
        # tests on one machine: never the default 0.0.0.0, and never the default port, which others may hold
        "metrics": {"port": None} if metrics_port is None else {"port": metrics_port, "host": "127.0.0.1"},
    }
    return yaml.safe_dump(_plain(_merged(job, extra or {})), sort_keys=False)


def write_job(path: str | os.PathLike[str], *, name: str | None = None, **options: Any) -> Path:
    """Write :func:`tiny_job` to ``path`` (the job is named after the file unless ``name`` is given)."""
    path = Path(path)
    path.write_text(tiny_job(path.stem if name is None else name, **options))
    return path


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        both_mappings = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merged(out[key], value) if both_mappings else value
    return out


def _plain(value: Any) -> Any:
    """``value`` with paths as strings, the one kind here that ``safe_dump`` refuses."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value
