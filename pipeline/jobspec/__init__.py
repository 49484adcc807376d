"""The job file (``sam3-stream run JOB.yaml``): validated, frozen pydantic models and their loader.

``load_job(path)`` reads the YAML (expanding ``${VAR}`` / ``${VAR:-default}`` from the
environment), replaces watchlist references by the rules in their files, validates and returns
a :class:`JobSpec`. Every problem raises :class:`JobSpecError`, one line:
``FILE:LINE: FIELD.PATH: problem (how to fix)``. Relative local paths (stream sources, the
Parquet path, a local checkpoint) resolve against the job file's directory, so a job runs the
same from any working directory.

One module per section of the file (``model``, ``engine``, ``streams``, ``sinks``), the whole
job in ``job``, reading in ``loading`` and watchlist lookup in ``watchlists``.
"""

from operators.sources import SourceKind, source_kind
from pipeline.jobspec.engine import EngineSpec, TrackingSpec
from pipeline.jobspec.job import JobSpec
from pipeline.jobspec.loading import JobSpecError, load_job, parse_job
from pipeline.jobspec.model import ModelSpec
from pipeline.jobspec.sinks import KafkaSinkSpec, MetricsSpec, ParquetSinkSpec, SinksSpec
from pipeline.jobspec.streams import ConceptRule, Polygon, StreamSpec
from pipeline.jobspec.watchlists import WATCHLIST_PATH_ENV, find_watchlist

__all__ = [
    "WATCHLIST_PATH_ENV", "ConceptRule", "EngineSpec", "JobSpec", "JobSpecError", "KafkaSinkSpec", "MetricsSpec",
    "ModelSpec", "ParquetSinkSpec", "Polygon", "SinksSpec", "SourceKind", "StreamSpec", "TrackingSpec",
    "find_watchlist", "load_job", "parse_job", "source_kind",
]
