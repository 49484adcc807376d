"""The whole job file: its sections, and the checks that tie them together."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, ValidationInfo, field_validator, model_validator

from pipeline.jobspec.common import NAME, Spec
from pipeline.jobspec.engine import EngineSpec
from pipeline.jobspec.index import IndexSpec
from pipeline.jobspec.limits import LimitsSpec, too_many_concepts, too_many_streams
from pipeline.jobspec.model import ModelSpec
from pipeline.jobspec.sinks import MetricsSpec, SinksSpec
from pipeline.jobspec.streams import ConceptRule, StreamSpec
from pipeline.validation_errors import FieldProblem


class JobSpec(Spec):
    name: str  # load_job defaults it to the job file's name
    model: ModelSpec = ModelSpec()
    engine: EngineSpec = EngineSpec()  # validated before streams, whose defaults come from it
    limits: LimitsSpec = LimitsSpec()  # validated before watchlists and streams, which it bounds
    watchlists: dict[str, list[ConceptRule]] = {}
    streams: list[StreamSpec] = []  # a job has streams, an index section, or both
    index: IndexSpec | None = None
    sinks: SinksSpec = SinksSpec()
    metrics: MetricsSpec = MetricsSpec()
    _job_file: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"job name {value!r} may only use letters, digits, '_', '.' and '-'")
        return value

    @field_validator("metrics", "sinks", mode="before")
    @classmethod
    def _null_section(cls, value: Any, info: ValidationInfo) -> Any:
        return ({"port": None} if info.field_name == "metrics" else {}) if value is None else value

    @field_validator("watchlists", "streams", mode="before")
    @classmethod
    def _within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        """Counted before a single item is validated: a job of 10,000 streams is refused at once."""
        limits = info.data.get("limits") or LimitsSpec()
        if info.field_name == "streams" and isinstance(value, list):
            if problem := too_many_streams(len(value), limits):
                raise ValueError(problem)
        elif isinstance(value, dict):
            for name, rules in value.items():
                if isinstance(rules, list) and (problem := too_many_concepts(len(rules), limits)):
                    raise FieldProblem((name,), problem)
        return value

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
    def _streams(cls, value: list[StreamSpec], info: ValidationInfo) -> list[StreamSpec]:
        if not value:
            raise ValueError("a job needs at least one stream (add '- id: ..., source: ..., watchlist: ...')")
        first: dict[str, int] = {}
        for index, stream in enumerate(value):
            if first.setdefault(stream.id, index) != index:
                raise FieldProblem((index, "id"), f"duplicate stream id '{stream.id}' (also streams[{first[stream.id]}]"
                                   "; ids must be unique)")
        engine = info.data.get("engine")  # absent when the engine section failed: that error is reported
        if engine is None:
            return value
        return [s if s.max_in_flight else s.model_copy(update={"max_in_flight": engine.max_in_flight}) for s in value]

    @model_validator(mode="after")
    def _links(self) -> JobSpec:
        if self.streams and self.index is not None:
            raise FieldProblem(("index",), "a job has streams: or an index: section, not both (split it into a "
                               "streaming job and an index job)")
        if not self.streams and self.index is None:
            raise FieldProblem(("streams",), "required key missing (a job needs streams: '- id: ..., source: ..., "
                               "watchlist: ...', or an index: section)")
        if self.index is not None and self.index.watchlist not in self.watchlists:
            close = difflib.get_close_matches(self.index.watchlist, list(self.watchlists), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise FieldProblem(("index", "watchlist"), f"unknown watchlist '{self.index.watchlist}' — "
                               f"{hint}(defined: {', '.join(self.watchlists) or 'none'})")
        for index, stream in enumerate(self.streams):
            if stream.watchlist not in self.watchlists:
                close = difflib.get_close_matches(stream.watchlist, list(self.watchlists), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise FieldProblem(("streams", index, "watchlist"), f"unknown watchlist '{stream.watchlist}' — "
                                   f"{hint}(defined: {', '.join(self.watchlists) or 'none'})")
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

    def index_rules(self) -> list[ConceptRule]:
        """The rules of the index section's watchlist."""
        if self.index is None:
            raise KeyError(f"job {self.name!r} has no index: section")
        return list(self.watchlists[self.index.watchlist])

    def concepts(self) -> list[str]:
        """Every concept any stream watches, once each, in first-seen order."""
        used = {s.watchlist for s in self.streams} | ({self.index.watchlist} if self.index is not None else set())
        return list(dict.fromkeys(r.concept for n, rules in self.watchlists.items() if n in used for r in rules))
