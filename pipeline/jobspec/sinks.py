"""``sinks:`` and ``metrics:``: where a job's records, events and counters go."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.jobspec.common import Spec, base_dir, local_path
from pipeline.validation_errors import FieldProblem

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_KAFKA_RESERVED = {"bootstrap_servers": "it is sinks.kafka.bootstrap_servers",
                   "acks": "the pipeline always uses acks=all", "enable_idempotence": "the producer is always idempotent",
                   "key_serializer": "keys are stream ids", "value_serializer": "values are versioned JSON"}


class ParquetSinkSpec(Spec):
    path: Path  # dataset root (tracks/, events/ below it); relative to the job file
    flush_rows: int = Field(10_000, ge=1)  # write a file once a stream has buffered this many rows ...
    flush_seconds: float = Field(10.0, gt=0)  # ... or this long after its first buffered row

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("empty path (name the output directory, e.g. out/)")
            return local_path(value.strip(), base_dir(info))
        return value


class KafkaSinkSpec(Spec):
    bootstrap_servers: str = "embedded"  # "embedded" (bundled local broker) | host:port[,host:port]
    topic: str = "sam3.tracks"
    events_topic: str = "sam3.events"
    control_topic: str | None = None  # live watchlist commands are read from it; None: no live commands
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

    @field_validator("topic", "events_topic", "control_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC.fullmatch(value):
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
        if self.control_topic in (self.topic, self.events_topic):
            raise FieldProblem(("control_topic",), f"control_topic must differ from topic and events_topic "
                               f"('{self.control_topic}' is one of them)")
        return self

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers == "embedded"


class SinksSpec(Spec):
    parquet: ParquetSinkSpec | None = None
    kafka: KafkaSinkSpec | None = None


class MetricsSpec(Spec):
    port: int | None = Field(9464, ge=1, le=65535)  # Prometheus endpoint; null disables it
    host: str = "0.0.0.0"


def _kafka_producer_settings() -> set[str]:
    try:
        from kafka import KafkaProducer
    except ImportError:  # without kafka-python, the sink reports unknown settings itself
        return set()
    return set(KafkaProducer.DEFAULT_CONFIG)
