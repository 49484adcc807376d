"""The job file (``sam3-stream run JOB.yaml``): validated, frozen pydantic models and their loader.

``load_job(path)`` reads the YAML (expanding ``${VAR}`` / ``${VAR:-default}`` from the
environment), replaces watchlist references by the rules in their files, validates and returns
a :class:`JobSpec`. Every problem raises :class:`JobSpecError`, one line:
``FILE:LINE: FIELD.PATH: problem (how to fix)``. Relative local paths (stream sources, the
Parquet path, a local checkpoint) resolve against the job file's directory, so a job runs the
same from any working directory.

Watchlist files hold a YAML *list* of rules (``- concept: forklift``). A name such as ``safety``
(``watchlists: {safety: safety}``, or a stream's ``watchlist: safety`` not defined inline) is
looked up as ``safety.yaml`` / ``.yml`` in: the ``watchlist_path`` directories, then
``$SAM3_WATCHLIST_PATH`` (``os.pathsep``-separated), then ``watchlists/`` and
``configs/watchlists/`` of the job file's directory and of each parent up to the repository root
(the first directory holding ``.git`` or ``pyproject.toml``). A reference containing ``/`` or
ending in ``.yaml`` / ``.yml`` is a path relative to the job file.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.yaml_source import (
    FieldProblem,
    LineMap,
    LocatedError,
    YamlDocument,
    YamlPath,
    describe_kind,
    describe_value,
    format_path,
    locate_validation_error,
    parse_yaml,
    read_yaml,
)

logger = logging.getLogger(__name__)

WATCHLIST_PATH_ENV = "SAM3_WATCHLIST_PATH"
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
SourceKind = Literal["file", "glob", "directory", "rtsp", "http", "hls"]
_ALLOWED_SOURCES = "a file path, a glob, a directory, rtsp://, rtsps://, http:// or https://"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(//)?")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_KAFKA_RESERVED = {"bootstrap_servers": "it is sinks.kafka.bootstrap_servers",
                   "acks": "the pipeline always uses acks=all", "enable_idempotence": "the producer is always idempotent",
                   "key_serializer": "keys are stream ids", "value_serializer": "values are versioned JSON"}


class JobSpecError(LocatedError):
    """A job file problem. ``str()`` is one line, ``FILE:LINE: FIELD.PATH: problem (how to fix)``;
    attributes ``file``, ``line`` (1-based; None when the whole file is at fault), ``path``
    (tuple of keys and indices) and ``problem``."""


# --- models --------------------------------------------------------------------------------------

class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base_dir") or os.getcwd())


def _local_path(value: str, base_dir: Path) -> str:
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
    return path + "/" if value.endswith("/") and not path.endswith("/") else path


def _polygon(value: Any) -> Any:
    """A zone: >= 3 ``[x, y]`` pixel points enclosing a non-zero area."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"a zone is a list of [x, y] points, got {describe_value(value)}")
    for index, point in enumerate(value):
        ok = isinstance(point, list | tuple) and len(point) == 2 and all(
            isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) for c in point)
        if not ok:
            raise FieldProblem((index,), f"a zone point is [x, y] in pixels, got {describe_value(point)}")
    if len(value) < 3:
        raise ValueError(f"a zone polygon needs at least 3 [x, y] points (got {len(value)})")
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(value, [*value[1:], value[0]], strict=True))
    if abs(area) < 1e-9:
        raise ValueError("zone polygon encloses no area (its points are on one line); list its corners in order")
    return value


Polygon = Annotated[list[tuple[float, float]], BeforeValidator(_polygon)]


class ModelSpec(_Spec):
    checkpoint: str = "facebook/sam3"  # hub repo id | local dir | .pt/.safetensors file
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty checkpoint (use a hub id like facebook/sam3, a directory or a .pt/.safetensors file)")
        expanded = os.path.expanduser(value)
        local = (os.path.isabs(expanded) or value.startswith((".", "~")) or value.count("/") >= 2
                 or value.endswith((".pt", ".pth", ".safetensors")))
        if local or (_base_dir(info) / expanded).exists():
            return _local_path(value, _base_dir(info))
        return value  # a hub repo id

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"unknown device '{value}' (use auto, cpu, cuda or cuda:N)")
        return value


class EngineSpec(_Spec):
    replicas: int = Field(1, ge=1)  # engine actors; one per GPU
    num_cpus: int = Field(1, ge=1)  # CPU cores each engine reserves; a CPU engine runs that many torch threads
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(15.0, ge=0)
    hotstart: Literal["tentative", "off"] = "tentative"
    evict_after_frames: int | None = Field(300, ge=1)  # drop objects absent this long; null: keep every object
    max_in_flight: int = Field(4, ge=1)  # frames per stream sent to the engine and not yet back

    @field_validator("hotstart", mode="before")
    @classmethod
    def _bare_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads an unquoted `off` as false


class ConceptRule(_Spec):
    concept: str
    threshold: float = 0.5
    min_frames: int = Field(1, ge=1)  # a track is reported once seen this many frames ...
    min_seconds: float = Field(0.0, ge=0)  # ... and this long
    zones: list[Polygon] | None = None  # only objects inside one of these (pixels of the frame)

    @field_validator("concept")
    @classmethod
    def _concept(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("empty concept (write a noun phrase such as 'forklift')")
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value} (a score threshold; default 0.5)")
        return value


class StreamSpec(_Spec):
    id: str
    source: str  # after validation: a URL, or an absolute path / glob (dirs keep a trailing '/')
    fps: float | None = Field(None, gt=0)  # sampling rate; None = every frame
    watchlist: str
    zones: list[Polygon] | None = None  # default zones for the watchlist's rules that have none
    live: bool | None = Field(None, validate_default=True)  # after validation: always a bool
    loop: bool = False  # replay a file source forever (demos, soak tests)
    max_in_flight: int | None = Field(None, ge=1)  # after JobSpec validation: always an int

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"stream id {value!r} may only use letters, digits, '_', '.' and '-' "
                             "(it names Kafka keys and Parquet partitions)")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError(f"empty source (use {_ALLOWED_SOURCES})")
        match = _URL.match(value)
        if match is not None:
            scheme = match.group(1).lower()
            if scheme == "file" and match.group(2):
                parts = urlsplit(value)
                if parts.netloc not in ("", "localhost"):
                    raise ValueError("file:// URLs must be local (file:///path/to/video.mp4)")
                return _local_path(unquote(parts.path), _base_dir(info))
            if scheme not in NETWORK_SCHEMES:
                raise ValueError(f"unsupported scheme '{scheme}' — use {_ALLOWED_SOURCES}")
            if not match.group(2):
                raise ValueError(f"malformed URL (write {scheme}://HOST[:PORT]/PATH)")
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError as e:
                raise ValueError(f"malformed {scheme}:// URL: {e}") from None
            if not parts.hostname:
                raise ValueError(f"URL has no host (write {scheme}://HOST[:PORT]/PATH)")
            return value
        return _local_path(value, _base_dir(info))

    @field_validator("watchlist")
    @classmethod
    def _watchlist(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty watchlist name (name one defined under watchlists:, or a watchlist file)")
        return value

    @field_validator("live")
    @classmethod
    def _live(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        source = info.data.get("source")
        if value is None and source is not None:
            return _is_network(source)
        return value

    @field_validator("loop")
    @classmethod
    def _loop(cls, value: bool, info: ValidationInfo) -> bool:
        source = info.data.get("source")
        if value and source is not None and _is_network(source):
            raise ValueError("only file, glob and directory sources can loop (remove 'loop: true')")
        return value

    @property
    def source_kind(self) -> SourceKind:
        return source_kind(self.source)


class ParquetSinkSpec(_Spec):
    path: Path  # dataset root (tracks/, events/ below it); relative to the job file
    flush_rows: int = Field(10_000, ge=1)  # write a file once a stream has buffered this many rows ...
    flush_seconds: float = Field(10.0, gt=0)  # ... or this long after its first buffered row

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("empty path (name the output directory, e.g. out/)")
            return _local_path(value.strip(), _base_dir(info))
        return value


class KafkaSinkSpec(_Spec):
    bootstrap_servers: str = "embedded"  # "embedded" (bundled local broker) | host:port[,host:port]
    topic: str = "sam3.tracks"
    events_topic: str = "sam3.events"
    client: dict[str, str | int | float | bool] = {}  # extra KafkaProducer settings (security, tuning)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        value = value.strip()
        if value == "embedded":
            return value
        servers = [s.strip() for s in value.split(",")]
        for server in servers:
            match = _SERVER.fullmatch(server)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"bad Kafka server {server!r} (use 'embedded' or host:port[,host:port])")
        return ",".join(servers)

    @field_validator("topic", "events_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not _TOPIC.fullmatch(value):
            raise ValueError(f"bad Kafka topic name {value!r} (letters, digits, '.', '_', '-'; at most 249)")
        return value

    @field_validator("client")
    @classmethod
    def _client(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = _kafka_producer_settings()
        for key in value:
            if key in _KAFKA_RESERVED:
                raise FieldProblem((key,), f"'{key}' is set by the pipeline ({_KAFKA_RESERVED[key]}); remove it")
            if known and key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "see kafka-python's KafkaProducer settings"
                raise FieldProblem((key,), f"unknown Kafka producer setting '{key}' ({hint})")
        return value

    @model_validator(mode="after")
    def _distinct_topics(self) -> KafkaSinkSpec:
        if self.topic == self.events_topic:
            raise FieldProblem(("events_topic",), f"events_topic must differ from topic ('{self.topic}')")
        return self

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers == "embedded"


class SinksSpec(_Spec):
    parquet: ParquetSinkSpec | None = None
    kafka: KafkaSinkSpec | None = None


class MetricsSpec(_Spec):
    port: int | None = Field(9464, ge=1, le=65535)  # Prometheus endpoint; null disables it
    host: str = "0.0.0.0"


class JobSpec(_Spec):
    name: str  # load_job defaults it to the job file's name
    model: ModelSpec = ModelSpec()
    engine: EngineSpec = EngineSpec()
    watchlists: dict[str, list[ConceptRule]] = {}
    streams: list[StreamSpec]
    sinks: SinksSpec = SinksSpec()
    metrics: MetricsSpec = MetricsSpec()
    _job_file: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"job name {value!r} may only use letters, digits, '_', '.' and '-'")
        return value

    @field_validator("metrics", "sinks", mode="before")
    @classmethod
    def _null_section(cls, value: Any, info: ValidationInfo) -> Any:
        return ({"port": None} if info.field_name == "metrics" else {}) if value is None else value

    @field_validator("watchlists")
    @classmethod
    def _watchlists(cls, value: dict[str, list[ConceptRule]]) -> dict[str, list[ConceptRule]]:
        for name, rules in value.items():
            if not rules:
                raise FieldProblem((name,), "empty watchlist (add at least one '- concept: ...')")
            seen: dict[str, int] = {}
            for index, rule in enumerate(rules):
                first = seen.setdefault(rule.concept.casefold(), index)
                if first != index:
                    raise FieldProblem((name, index, "concept"), f"concept '{rule.concept}' is already rule "
                                       f"[{first}] of this watchlist (merge them: one rule per concept)")
        return value

    @field_validator("streams")
    @classmethod
    def _streams(cls, value: list[StreamSpec]) -> list[StreamSpec]:
        if not value:
            raise ValueError("a job needs at least one stream (add '- id: ..., source: ..., watchlist: ...')")
        first: dict[str, int] = {}
        for index, stream in enumerate(value):
            if first.setdefault(stream.id, index) != index:
                raise FieldProblem((index, "id"), f"duplicate stream id '{stream.id}' (also streams[{first[stream.id]}]"
                                   "; ids must be unique)")
        return value

    @model_validator(mode="after")
    def _links(self) -> JobSpec:
        for index, stream in enumerate(self.streams):
            if stream.watchlist not in self.watchlists:
                close = difflib.get_close_matches(stream.watchlist, list(self.watchlists), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise FieldProblem(("streams", index, "watchlist"), f"unknown watchlist '{stream.watchlist}' — "
                                   f"{hint}(defined: {', '.join(self.watchlists) or 'none'})")
        streams = [s if s.max_in_flight else s.model_copy(update={"max_in_flight": self.engine.max_in_flight})
                   for s in self.streams]
        self.__dict__["streams"] = streams  # frozen model: defaults filled once, here
        return self

    @property
    def job_file(self) -> Path | None:
        """The job file this spec was loaded from (None when built in code)."""
        return self._job_file

    def stream(self, stream_id: str) -> StreamSpec:
        for stream in self.streams:
            if stream.id == stream_id:
                return stream
        raise KeyError(f"no stream {stream_id!r} in job {self.name!r}")

    def rules_for(self, stream: StreamSpec | str) -> list[ConceptRule]:
        """The stream's watchlist rules, each with its effective zones: its own if it has any,
        else the stream's (None = the whole frame)."""
        spec = self.stream(stream) if isinstance(stream, str) else stream
        rules = self.watchlists[spec.watchlist]
        if spec.zones is None:
            return list(rules)
        return [r if r.zones is not None else r.model_copy(update={"zones": spec.zones}) for r in rules]

    def concepts(self) -> list[str]:
        """Every concept any stream watches, once each, in first-seen order."""
        used = {s.watchlist for s in self.streams}
        return list(dict.fromkeys(r.concept for n, rules in self.watchlists.items() if n in used for r in rules))


def _is_network(source: str) -> bool:
    match = _URL.match(source)
    return match is not None and match.group(1).lower() in NETWORK_SCHEMES


def source_kind(source: str) -> SourceKind:
    """What a (validated) source string names."""
    match = _URL.match(source)
    scheme = match.group(1).lower() if match else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "hls" if urlsplit(source).path.lower().endswith(".m3u8") else "http"
    if any(ch in source for ch in "*?["):
        return "glob"
    return "directory" if source.endswith("/") or os.path.isdir(source) else "file"


def _kafka_producer_settings() -> set[str]:
    try:
        from kafka import KafkaProducer
    except ImportError:  # without kafka-python, the sink reports unknown settings itself
        return set()
    return set(KafkaProducer.DEFAULT_CONFIG)


# --- loading -------------------------------------------------------------------------------------

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
    search = [Path(p) for p in watchlist_path]
    search += [Path(p) for p in env.get(WATCHLIST_PATH_ENV, "").split(os.pathsep) if p]
    try:
        _resolve_watchlists(doc, job_dir, search, env)
        job = JobSpec.model_validate(doc.data, context={"base_dir": job_dir})
    except LocatedError as e:
        raise JobSpecError(e.file, e.line, e.path, e.problem) from None
    except ValidationError as e:
        located = locate_validation_error(e, doc, JobSpec)
        raise JobSpecError(located.file, located.line, located.path, located.problem) from None
    _warn_missing_paths(job, doc.lines)
    return job


def find_watchlist(ref: str, job_dir: Path, search: Sequence[Path] = ()) -> tuple[Path | None, list[Path]]:
    """The file a watchlist reference names (None if there is none) and the directories searched."""
    if "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml")):
        candidate = (job_dir / os.path.expanduser(ref)).resolve()
        return (candidate if candidate.is_file() else None), [candidate.parent]
    dirs = list(search)
    for directory in (job_dir, *job_dir.parents):
        dirs += [directory / "watchlists", directory / "configs" / "watchlists"]
        if any((directory / marker).exists() for marker in (".git", "pyproject.toml")):
            break
    for directory in dirs:
        for suffix in (".yaml", ".yml"):
            if (directory / f"{ref}{suffix}").is_file():
                return (directory / f"{ref}{suffix}").resolve(), dirs
    return None, dirs


def _display(path: Path) -> str:
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def _resolve_watchlists(doc: YamlDocument, job_dir: Path, search: list[Path], env: Mapping[str, str]) -> None:
    """Replace watchlist references (strings) by the rule lists of their files, in place."""
    data, lines = doc.data, doc.lines
    watchlists = data.get("watchlists", {})
    if not isinstance(watchlists, dict):
        return  # validation reports the type
    loaded: dict[Path, YamlDocument] = {}

    def load(ref: str, at: YamlPath, name: str) -> None:
        found, searched = find_watchlist(ref, job_dir, search)
        if found is None:
            known = [k for k, v in watchlists.items() if isinstance(v, list)]
            raise _missing_watchlist(ref, at, lines, known, searched)
        if found not in loaded:
            loaded[found] = _read_watchlist_file(found, env)
        watchlists[name] = loaded[found].data
        lines.graft(("watchlists", name), loaded[found].lines)

    for name, value in list(watchlists.items()):
        if isinstance(value, str):
            load(value, ("watchlists", name), name)
    streams = data.get("streams")
    for index, stream in enumerate(streams if isinstance(streams, list) else []):
        ref = stream.get("watchlist") if isinstance(stream, dict) else None
        if isinstance(ref, str) and ref.strip() and ref not in watchlists:
            load(ref, ("streams", index, "watchlist"), ref)
    if watchlists:
        data["watchlists"] = watchlists


def _read_watchlist_file(path: Path, env: Mapping[str, str]) -> YamlDocument:
    display = _display(path)
    doc = read_yaml(path, display, env)
    if doc.data is None:
        raise LocatedError(display, None, (), "empty watchlist file (list its rules: '- concept: forklift')")
    if not isinstance(doc.data, list):
        raise LocatedError(display, 1, (), "a watchlist file is a YAML list of rules ('- concept: forklift', "
                                           f"one per item), not {describe_kind(doc.data)}")
    return doc


def _missing_watchlist(ref: str, at: YamlPath, lines: LineMap, known: list[str], searched: list[Path]) -> LocatedError:
    close = difflib.get_close_matches(ref, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    file_name = ref if "/" in ref or ref.endswith((".yaml", ".yml")) else f"{ref}.yaml"
    where = ", ".join(_display(d) for d in dict.fromkeys(searched))
    loc = lines.locate(at)
    return LocatedError(loc.file, loc.line, at, f"unknown watchlist '{ref}' — {hint}(defined in the job: "
                                                f"{', '.join(known) or 'none'}; no file {file_name} in: {where})")


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
