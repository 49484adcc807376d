"""Publish track observations and events to Kafka, per the output contract in DESIGN.md.

Message key = ``stream_id`` (so one stream's messages land on one partition, in order), value =
the record's JSON (``schema_version`` included), ``acks=all``, idempotent producer.

Delivery is asynchronous: ``write_*`` hands records to kafka-python's producer, which batches
them (``linger_ms``, ``batch_size``) and retries transient failures until
``delivery_timeout_ms`` (kafka-python default 120 s; override through ``client``). Every record
ends acknowledged or failed, and failures are never dropped silently: they are counted and the
next ``flush()`` / ``close()`` raises :class:`~operators.sinks.SinkError` saying how many records
failed and why. A failure is reported once; after the error the sink keeps working.

Timing when Kafka is unreachable (all settable through ``client``): creating the producer waits
up to ``bootstrap_timeout_ms`` (30 s) and is retried on the next write; a ``send`` waiting for
topic metadata or buffer space blocks up to ``max_block_ms`` (60 s), after which the rest of
that write is counted as failed rather than waiting again for every record. The sink lowers
kafka-python's ``max_block_ms`` default to 5 s, so a stream is never held for a minute.

The spool: kafka-python 3 does not bound its own buffer (it has no ``buffer_memory``), so a
broker that is down or frozen would let unacknowledged records grow without limit. The sink
caps them itself at ``buffer_memory`` bytes of key and value (default 16 MiB; set it in
``client`` like the Java producer's ``buffer.memory``; the sink takes it out before kafka-python
sees the options). Past the cap a record is **dropped and counted** (``dropped``), never waited for:
the stream goes on at full speed, and the Parquet sink, which does not depend on Kafka, keeps
every record. Drops are a documented policy, not an error: ``flush``/``close`` do not raise for
them. The sink's own ``sink_degraded``/``sink_recovered`` events are never dropped (they are
small), so Kafka gets them once the broker is back.

Health: the sink turns *degraded* when a record is dropped or fails, and *recovered* when the
broker acknowledges a record again with the spool back under half its cap.
:meth:`KafkaSink.take_health_changes` hands out these transitions once each (the stream
publishes them as events).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from operators.records import Event, TrackObservation
from operators.sinks import ClosingSink, SinkError

logger = logging.getLogger(__name__)

# Producer settings the output contract fixes; `client` may not change them.
_FIXED = ("bootstrap_servers", "key_serializer", "value_serializer")
_MAX_REASONS = 10
_REASON_CHARS = 300
DEFAULT_SPOOL_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BLOCK_MS = 5000  # kafka-python's 60 s would hold the stream that long when metadata cannot come
_SINK_EVENTS = ("sink_degraded", "sink_recovered")  # never dropped: Kafka gets them once it is back


@dataclass(frozen=True)
class SinkHealth:
    """A sink turned degraded (records dropped or failing) or recovered (delivering again)."""

    sink: str
    degraded: bool
    reason: str  # why it turned degraded; empty on recovery
    dropped: int  # records the sink gave up on so far (refused by the full spool or failed for good)
    spooled_bytes: int  # waiting for the broker at the moment of the change

    def event(self, events: Any, frame_index: int, pts_s: float | None, ts: datetime):
        """This change as a ``sink_degraded``/``sink_recovered`` event of ``events`` (a ``StreamEvents``)."""
        details = {"sink": self.sink, "dropped": self.dropped, "spooled_bytes": self.spooled_bytes}
        if self.degraded:
            return events.sink_degraded(frame_index, ts, reason=self.reason, pts_s=pts_s, **details)
        return events.sink_recovered(frame_index, ts, pts_s=pts_s, **details)


def _retry_total(producer: Any) -> Any:
    """A cumulative retry counter hung on kafka-python's retry sensor, which only exposes a rate."""
    try:
        from kafka.metrics.stats import Total

        metrics = producer._metrics  # kafka-python keeps its Metrics registry private
        sensor = metrics.get_sensor("record-retries")
        name = metrics.metric_name("record-retry-total", "producer-metrics", "Retried record sends, all time")
        sensor.add(name, Total())
        return metrics.metrics[name]
    except Exception as exc:  # metrics disabled, or kafka-python internals changed
        logger.warning("Kafka sink cannot count producer retries (%s); `retries` will stay 0", exc)
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)  # kafka-python 3 errors already start with their class name
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


class KafkaSink(ClosingSink):
    """Kafka producer for ``topic`` (track observations) and ``events_topic`` (events).

    Counters (plain attributes, cumulative): ``sent`` records acknowledged by the broker,
    ``errors`` records that failed for good, ``retries`` record re-sends done by the producer,
    ``dropped`` records refused because the spool was full. ``spooled_bytes`` is what waits for the
    broker now, ``spool_peak_bytes`` the most it ever held (at most ``spool_bytes``); ``degraded``
    the health (module docstring). ``idempotent`` says whether the producer runs idempotent (None
    until it is created).
    """

    def __init__(self, bootstrap_servers: str, topic: str, events_topic: str, client: dict[str, Any] | None = None,
                 linger_ms: int = 5, batch_size: int = 256 * 1024) -> None:
        from kafka import KafkaProducer

        client = dict(client or {})
        # the Java producer's name for its buffer cap; kafka-python 3 has none, so the sink enforces it
        self.spool_bytes = client.pop("buffer_memory", None) or DEFAULT_SPOOL_BYTES
        if not isinstance(self.spool_bytes, int) or self.spool_bytes <= 0:
            raise ValueError(f"Kafka sink: client buffer_memory must be a positive number of bytes, got "
                             f"{self.spool_bytes!r}")
        unknown = sorted(set(client) - set(KafkaProducer.DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"Kafka sink: unknown kafka-python producer option(s) {unknown} in client; see "
                             "kafka.KafkaProducer for the valid names")
        for key in _FIXED:
            if key in client:
                raise ValueError(f"Kafka sink: client option {key!r} is set by the sink itself; remove it from client")
        if client.get("acks", "all") not in ("all", -1):
            raise ValueError(f"Kafka sink: client acks={client['acks']!r} breaks the output contract (acks=all); "
                             "remove acks from client")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.events_topic = events_topic
        self._config: dict[str, Any] = {
            "bootstrap_servers": [server.strip() for server in bootstrap_servers.split(",")],
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "client_id": "sam3-stream-sink",
            "max_block_ms": DEFAULT_MAX_BLOCK_MS,
        }
        self._config.update(client)
        self._producer: Any = None
        self._retry_metric: Any = None
        self._closed = False
        self._cond = threading.Condition()
        self._connect_lock = threading.Lock()
        self._pending = 0  # handed to the producer, neither acknowledged nor failed yet
        self._unreported = 0  # failures not yet raised by flush/close
        self._reasons: Counter[str] = Counter()
        self.sent = 0
        self.errors = 0
        self.dropped = 0
        self.spooled_bytes = 0
        self.spool_peak_bytes = 0
        self.degraded = False
        self._health: list[SinkHealth] = []  # transitions not yet taken
        self.idempotent: bool | None = None

    @property
    def retries(self) -> int:
        return int(self._retry_metric.value()) if self._retry_metric is not None else 0

    def connect(self) -> None:
        """Create the producer now (writes do it on demand); raises SinkError if Kafka cannot be reached."""
        self._check_open()
        with self._connect_lock:  # two threads' first writes must not create two producers
            if self._producer is None:
                self._connect()

    def _connect(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, KafkaError

        config = dict(self._config)
        try:
            try:
                producer = KafkaProducer(**config)
            except KafkaConfigurationError as exc:
                if not config.get("enable_idempotence") or "api_version" not in str(exc):
                    raise ValueError(f"Kafka sink: invalid producer settings in client: {exc}") from exc
                logger.warning("Kafka at %s does not support idempotent producers (%s); continuing without "
                               "idempotence, so a retried send may be written twice (consumers can de-duplicate "
                               "events on event_id)", self.bootstrap_servers, exc)
                config["enable_idempotence"] = False
                producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise SinkError(f"Kafka sink cannot connect to {self.bootstrap_servers}: {_describe(exc)}. "
                            "Check that the broker is running and sinks.kafka.bootstrap_servers is right.") from exc
        self._producer = producer
        self.idempotent = bool(producer.config["enable_idempotence"])
        self._retry_metric = _retry_total(producer)
        logger.info("Kafka sink connected to %s (topics %s, %s; idempotent=%s)", self.bootstrap_servers, self.topic,
                    self.events_topic, self.idempotent)

    def write_tracks(self, records: Sequence[TrackObservation]) -> None:
        """Queue track observations for ``topic``; delivery problems surface at flush/close."""
        self._write(self.topic, records, TrackObservation)

    def write_events(self, events: Sequence[Event]) -> None:
        """Queue events for ``events_topic``; delivery problems surface at flush/close."""
        self._write(self.events_topic, events, Event)

    def _write(self, topic: str, records: Sequence[Any], kind: type) -> None:
        self._check_open()
        if not records:
            return
        messages = []
        for record in records:
            if not isinstance(record, kind):
                raise TypeError(f"Kafka sink: expected {kind.__name__} for topic {topic!r}, got {type(record).__name__}")
            messages.append((record.stream_id.encode(), record.to_json()))
        try:
            self.connect()
        except SinkError as exc:
            self._fail(len(messages), topic, exc.__cause__ or exc)
            return
        from kafka.errors import KafkaError, KafkaTimeoutError

        producer = self._producer
        exempt = kind is Event
        for i, (key, value) in enumerate(messages):
            size = len(key) + len(value)
            if not self._spool(size, exempt and records[i].type in _SINK_EVENTS):
                continue
            try:
                future = producer.send(topic, key=key, value=value)
            except KafkaError as exc:
                if isinstance(exc, KafkaTimeoutError):
                    # Metadata or buffer space did not come within max_block_ms: the next record
                    # would wait just as long, so the rest of this write fails with the same cause.
                    self._fail(len(messages) - i, topic, exc)
                    self._settle(size)
                    return
                self._fail(1, topic, exc)  # e.g. one record larger than max_request_size
                self._settle(size)
                continue
            future.add_callback(self._on_delivered, size).add_errback(self._on_failed, topic, size)

    def _spool(self, size: int, exempt: bool) -> bool:
        """Count a record in as waiting for the broker; False (dropped and counted) when the spool is full."""
        with self._cond:
            if not exempt and self.spooled_bytes + size > self.spool_bytes:
                self.dropped += 1
                self._turn_degraded(f"spool full ({self.spool_bytes} bytes waiting for the broker): records are "
                                    "dropped from Kafka until it takes them again; Parquet keeps every record")
                return False
            self._pending += 1
            self.spooled_bytes += size
            self.spool_peak_bytes = max(self.spool_peak_bytes, self.spooled_bytes)
            return True

    def _turn_degraded(self, reason: str) -> None:
        """Called holding ``_cond``."""
        if self.degraded:
            return
        self.degraded = True
        self._health.append(SinkHealth("kafka", True, reason, self.dropped + self.errors, self.spooled_bytes))
        logger.warning("Kafka sink for %s degraded: %s", self.bootstrap_servers, reason)

    def take_health_changes(self) -> list[SinkHealth]:
        """The degraded/recovered transitions since the last call, oldest first."""
        with self._cond:
            changes, self._health = self._health, []
        return changes

    def _on_delivered(self, size: int, _metadata: Any) -> None:
        with self._cond:
            self.sent += 1
            self._pending -= 1
            self.spooled_bytes -= size
            if self.degraded and self.spooled_bytes * 2 < self.spool_bytes:
                self.degraded = False
                self._health.append(SinkHealth("kafka", False, "", self.dropped + self.errors, self.spooled_bytes))
                logger.info("Kafka sink for %s recovered: the broker takes records again (%d dropped so far)",
                            self.bootstrap_servers, self.dropped + self.errors)
            if self._pending == 0:
                self._cond.notify_all()

    def _on_failed(self, topic: str, size: int, exc: BaseException) -> None:
        self._fail(1, topic, exc)  # counted before settling, so a waiting flush sees it
        self._settle(size)

    def _settle(self, size: int) -> None:
        with self._cond:
            self._pending -= 1
            self.spooled_bytes -= size
            if self._pending == 0:
                self._cond.notify_all()

    def _fail(self, count: int, topic: str, exc: BaseException) -> None:
        reason = f"{topic}: {_describe(exc)}"[:_REASON_CHARS]
        with self._cond:
            first = self._unreported == 0
            self.errors += count
            self._unreported += count
            if reason in self._reasons or len(self._reasons) < _MAX_REASONS:
                self._reasons[reason] += count
            else:
                self._reasons["(other causes)"] += count
            self._turn_degraded(f"delivery failed: {reason}")
        if first:  # log once per reporting period, not once per record
            logger.error("Kafka sink: delivery to %s failed (%s); reported at the next flush", self.bootstrap_servers,
                         reason)

    def flush(self, timeout_s: float | None = None, *, spooled_ok: bool = False) -> None:
        """Send everything queued and wait for each record's outcome.

        Raises SinkError if records failed since the last report, or if records are still
        unacknowledged after ``timeout_s`` (None: wait until each is delivered or times out
        after the producer's ``delivery_timeout_ms``). With ``spooled_ok`` records still waiting
        after ``timeout_s`` are no error: they stay in the spool (a broker that is down does not
        hold the stream).
        """
        if self._producer is not None:
            from kafka.errors import KafkaTimeoutError

            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            with contextlib.suppress(KafkaTimeoutError):  # reported below, with the records still outstanding
                self._producer.flush(timeout=timeout_s)
            with self._cond:
                # Outcome callbacks run just before the producer's flush returns; the wait only
                # covers a callback still finishing on the sender thread.
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._cond.wait_for(lambda: self._pending == 0, timeout=5.0 if remaining is None else remaining)
                pending = self._pending
            if pending and not spooled_ok:
                self._raise_failures(f"{pending} records not yet acknowledged after {timeout_s} s")
        self._raise_failures()

    def _raise_failures(self, extra: str | None = None) -> None:
        with self._cond:
            failed, reasons = self._unreported, dict(self._reasons)
            self._unreported = 0
            self._reasons.clear()
        if not failed and extra is None:
            return
        causes = "; ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        parts = [f"{failed} records could not be delivered to Kafka at {self.bootstrap_servers}"]
        if causes:
            parts.append(f"causes: {causes}")
        if extra:
            parts.append(extra)
        raise SinkError(". ".join(parts) + ". Check the broker and the topics; failed records are not retried "
                        "again by the sink.", failed=failed, reasons=reasons)

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then close the producer (also when the flush fails); raises the flush's SinkError."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
                self._producer = None

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"Kafka sink for {self.bootstrap_servers} is closed; create a new KafkaSink")

