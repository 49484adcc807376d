"""Reading a job file: YAML with ``${VAR}`` / ``${VAR:-default}`` from the environment, watchlist
references replaced by their files' rules, then validation; every problem one located line."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from pipeline.jobspec.job import JobSpec
from pipeline.jobspec.watchlists import resolve_watchlists, search_path
from pipeline.validation_errors import describe_kind, locate_validation_error
from pipeline.yaml_source import LineMap, LocatedError, YamlDocument, format_path, parse_yaml, read_yaml

logger = logging.getLogger(__name__)


class JobSpecError(LocatedError):
    """A job file problem. ``str()`` is one line, ``FILE:LINE: FIELD.PATH: problem (how to fix)``;
    attributes ``file``, ``line`` (1-based; None when the whole file is at fault), ``path``
    (tuple of keys and indices) and ``problem``."""


def load_job(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    watchlist_path: Sequence[str | os.PathLike[str]] = (),
) -> JobSpec:
    """Read, interpolate, resolve and validate the job file at ``path``; raise :class:`JobSpecError`."""
    env = os.environ if env is None else env
    file = Path(path)
    try:
        doc = read_yaml(file, str(path), env)
    except LocatedError as e:
        hint = " (example jobs are in configs/examples/)" if e.problem.startswith("file not found") else ""
        raise JobSpecError(e.file, e.line, e.path, e.problem + hint) from None
    job = _build(doc, file.resolve().parent, env, watchlist_path, file.stem)
    job._job_file = file.resolve()
    return job


def parse_job(
    text: str,
    *,
    filename: str = "<job>",
    base_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    watchlist_path: Sequence[str | os.PathLike[str]] = (),
) -> JobSpec:
    """:func:`load_job` for YAML text; relative paths resolve against ``base_dir`` (default: cwd)."""
    env = os.environ if env is None else env
    try:
        doc = parse_yaml(text, filename, env)
    except LocatedError as e:
        raise JobSpecError(e.file, e.line, e.path, e.problem) from None
    base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
    return _build(doc, base, env, watchlist_path, Path(filename).stem)


def _build(doc: YamlDocument, job_dir: Path, env: Mapping[str, str],
           watchlist_path: Sequence[str | os.PathLike[str]], stem: str) -> JobSpec:
    file = doc.lines.default.file
    if doc.data is None:
        raise JobSpecError(file, None, (), "the job file is empty (start from configs/examples/demo.yaml)")
    if not isinstance(doc.data, dict):
        raise JobSpecError(file, 1, (), f"a job file is a mapping (name:, model:, streams:, ...), "
                                        f"not {describe_kind(doc.data)}")
    doc.data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "-", stem) or "job")
    try:
        resolve_watchlists(doc, job_dir, search_path(watchlist_path, env), env)
        job = JobSpec.model_validate(doc.data, context={"base_dir": job_dir})
    except LocatedError as e:
        raise JobSpecError(e.file, e.line, e.path, e.problem) from None
    except ValidationError as e:
        located = locate_validation_error(e, doc, JobSpec)
        raise JobSpecError(located.file, located.line, located.path, located.problem) from None
    _warn_missing_paths(job, doc.lines)
    return job


def _warn_missing_paths(job: JobSpec, lines: LineMap) -> None:
    """Missing local inputs are not config errors (they may appear later, or exist only on the
    worker nodes), but a line naming the field that points at nothing saves a debugging session."""
    for index, stream in enumerate(job.streams):
        if stream.source_kind in ("file", "directory") and not os.path.exists(stream.source):
            loc = lines.locate(("streams", index, "source"))
            logger.warning("%s:%d: %s: %s does not exist (yet); the stream ends with a stream_error if it is "
                           "still missing when it starts", loc.file, loc.line, format_path(("streams", index, "source")),
                           stream.source)
    checkpoint = job.model.checkpoint
    if os.path.isabs(checkpoint) and not os.path.exists(checkpoint):
        loc = lines.locate(("model", "checkpoint"))
        logger.warning("%s:%d: model.checkpoint: %s does not exist (create a random test checkpoint with "
                       "`sam3-stream checkpoint init-random DIR`, or use the hub id facebook/sam3)",
                       loc.file, loc.line, checkpoint)
