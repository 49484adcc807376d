"""``sinks:`` and ``metrics:``: where a job's records, events and counters go."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from operators.storage import is_object_store
from pipeline.jobspec.common import Spec, base_dir, exists, local_path
from pipeline.validation_errors import FieldProblem

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_KAFKA_RESERVED = {"bootstrap_servers": "it is sinks.kafka.bootstrap_servers",
                   "acks": "the pipeline always uses acks=all", "enable_idempotence": "the producer is always idempotent",
                   "key_serializer": "keys are stream ids", "value_serializer": "values are versioned JSON"}


class ParquetSinkSpec(Spec):
    path: Path | str  # dataset root (tracks/, events/ below it); relative to the job file, or an s3://... URI (a str)
    flush_rows: int = Field(10_000, ge=1)  # write a file once a stream has buffered this many rows ...
    flush_seconds: float = Field(10.0, gt=0)  # ... or this long after its first buffered row

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("empty path (name the output directory, e.g. out/)")
            if is_object_store(value.strip()):
                return value.strip().rstrip("/")  # kept as written: a Path would fold s3:// into s3:/
            return Path(local_path(value.strip(), base_dir(info)))
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
    def _client(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        known = _kafka_producer_settings()
        for key in value:
            if key in _KAFKA_RESERVED:
                raise FieldProblem((key,), f"'{key}' is set by the pipeline ({_KAFKA_RESERVED[key]}); remove it")
            if known and key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "see kafka-python's KafkaProducer settings"
                raise FieldProblem((key,), f"unknown Kafka producer setting '{key}' ({hint})")
        return checked_kafka_security(value, base_dir(info))

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


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
_SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile")


def checked_kafka_security(client: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``client`` with its TLS files made absolute against ``directory`` (the job file's). TLS and
    SASL settings the broker would only refuse at connect time (or, for a missing CA file, deep in
    the TLS handshake) are refused here instead."""
    protocol = client.get("security_protocol", "PLAINTEXT")
    if protocol not in _SECURITY_PROTOCOLS:
        close = difflib.get_close_matches(str(protocol).upper(), _SECURITY_PROTOCOLS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"one of {', '.join(_SECURITY_PROTOCOLS)}"
        raise FieldProblem(("security_protocol",), f"unknown security protocol {protocol!r} ({hint})")
    mechanism = client.get("sasl_mechanism")
    if protocol.startswith("SASL"):
        if mechanism is None:
            raise FieldProblem(("sasl_mechanism",), f"security_protocol {protocol} needs a sasl_mechanism "
                               f"(one of {', '.join(_SASL_MECHANISMS)})")
        if mechanism not in _SASL_MECHANISMS:
            raise FieldProblem(("sasl_mechanism",),
                               f"unknown SASL mechanism {mechanism!r} (one of {', '.join(_SASL_MECHANISMS)})")
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            for key in ("sasl_plain_username", "sasl_plain_password"):
                if not client.get(key):
                    raise FieldProblem((key,), f"SASL {mechanism} needs {key} (keep the password out of the "
                                       "job file: sasl_plain_password: ${KAFKA_PASSWORD})")
    elif mechanism is not None or any(k.startswith("sasl_") for k in client):
        raise FieldProblem(("security_protocol",), f"SASL settings are ignored with security_protocol "
                           f"{protocol}; use SASL_SSL (or SASL_PLAINTEXT)")
    checked = dict(client)
    for key in _SSL_FILES:
        if key in client:
            checked[key] = local_path(str(client[key]), directory)
            if not exists(Path(checked[key]), file=True):
                raise FieldProblem((key,), f"{key} {client[key]!r} is not a file (give the path of the PEM "
                                   "file, absolute or relative to the job file)")
    return checked


def _kafka_producer_settings() -> set[str]:
    try:
        from kafka import KafkaProducer
    except ImportError:  # without kafka-python, the sink reports unknown settings itself
        return set()
    return set(KafkaProducer.DEFAULT_CONFIG) | {"buffer_memory"}  # the sink's spool cap (operators/sinks/kafka_sink.py)
