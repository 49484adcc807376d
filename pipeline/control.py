"""The driver's side of live watchlist changes: the control topic, and job file reloads on SIGHUP.

The driver reads the job's control topic (``sinks.kafka.control_topic``) with one consumer and
forwards each command to the stream actor it names; the stream actor owns its rules and applies
them at a frame boundary (``pipeline.live_watchlist``). The consumer starts at the topic's end
when the job starts: commands sent while no job ran are not replayed.

On SIGHUP the driver reads the job file again. A file that fails validation is refused whole
(logged with its FILE:LINE message, and a ``watchlist_rejected`` event); otherwise each stream
whose rules differ from the file's previous version is sent its new watchlist. Any other
difference (streams, model, engine, sinks, metrics) needs a restart: it is refused with a log line.

Commands the driver refuses before any stream sees them (not JSON, no or an unknown stream, an
unknown command, a bad field) and refused reloads are events of the job itself, on stream id
``JOB_STREAM_ID``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from operators.stream_events import StreamEvents
from operators.watchlist_changes import CommandError, ControlCommand, parse_command
from operators.watchlist_rules import WatchRule

logger = logging.getLogger(__name__)

JOB_STREAM_ID = "_job"  # the stream id of events about the job, not one of its streams
_POLL_MS = 50


@dataclass(frozen=True)
class ReloadPlan:
    """What a reloaded job file changes: new rules per stream, and what it cannot change without a restart."""

    rules: dict[str, tuple[WatchRule, ...]] = field(default_factory=dict)  # streams whose rules changed
    refused: list[str] = field(default_factory=list)  # one line per difference that needs a restart


def stream_rules(job) -> dict[str, tuple[WatchRule, ...]]:
    """Each stream's rules as the job file gives them (zones resolved)."""
    return {s.id: tuple(WatchRule.from_any(r) for r in job.rules_for(s)) for s in job.streams}


def plan_reload(old_job, new_job, current: Mapping[str, tuple[WatchRule, ...]] | None = None) -> ReloadPlan:
    """Diff two valid versions of a job file. ``current`` (default: ``old_job``'s) are the file rules
    last applied per stream; a stream gets new rules when the new file's differ from them."""
    current = stream_rules(old_job) if current is None else current
    refused = []
    old_ids, new_ids = [s.id for s in old_job.streams], [s.id for s in new_job.streams]
    if added := [s for s in new_ids if s not in old_ids]:
        refused.append(f"streams added ({', '.join(added)})")
    if removed := [s for s in old_ids if s not in new_ids]:
        refused.append(f"streams removed ({', '.join(removed)})")
    old_rest, new_rest = _without_watchlists(old_job), _without_watchlists(new_job)
    for key in dict.fromkeys([*old_rest, *new_rest]):
        if key == "streams":
            common = [s for s in old_ids if s in new_ids]
            changed = [s for s in common if old_rest[key][s] != new_rest[key][s]]
            if changed:
                refused.append(f"streams changed other than their watchlist ({', '.join(changed)})")
        elif old_rest.get(key) != new_rest.get(key):
            refused.append(f"{key} changed")
    new_rules = stream_rules(new_job)
    rules = {sid: new_rules[sid] for sid in new_ids if sid in current and new_rules[sid] != current[sid]}
    return ReloadPlan(rules, refused)


def _without_watchlists(job) -> dict[str, Any]:
    """The job as data, less what makes up its streams' rules (watchlists, a stream's watchlist and zones)."""
    data = job.model_dump(mode="json", exclude={"watchlists"})
    streams = {}
    for stream in data["streams"]:
        streams[stream["id"]] = {k: v for k, v in stream.items() if k not in ("id", "watchlist", "zones")}
    data["streams"] = streams
    return data


class JobEvents:
    """Events of the job itself (refused commands and reloads), written to the job's sinks."""

    def __init__(self, job, kafka_servers: str | None, run_id: str | None):
        from pipeline.outputs import StreamOutputs

        self.events = StreamEvents(job.name, JOB_STREAM_ID)
        self.outputs = StreamOutputs(job, JOB_STREAM_ID, kafka_servers, run=run_id)

    def reject(self, problem: str, command: Any, source: str) -> None:
        event = self.events.watchlist_rejected(None, datetime.now(UTC), problem, source=source, command=command)
        try:
            self.outputs.write([], [event])
            self.outputs.flush()
        except Exception as e:  # the job goes on; the log line below still tells
            logger.error("could not write a job event: %s", e)

    def close(self) -> None:
        self.outputs.close()


class ControlConsumer:
    """Reads the control topic from its end at start-up; ``poll`` never blocks for long."""

    def __init__(self, servers: str, topic: str, client: Mapping[str, Any] | None = None):
        from kafka import KafkaConsumer, TopicPartition

        from operators.broker import create_topics

        create_topics(servers, [topic])  # assign() needs its partitions; an existing topic is kept
        security = {k: v for k, v in (client or {}).items() if k.startswith(("security", "sasl", "ssl"))}
        self.topic = topic
        self._consumer = KafkaConsumer(bootstrap_servers=servers.split(","), group_id=None, enable_auto_commit=False,
                                       client_id="sam3-stream-control", **security)
        partitions = self._consumer.partitions_for_topic(topic) or {0}
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the positions now: a command sent after start-up is never skipped
            self._consumer.position(tp)

    def poll(self) -> list[tuple[bytes | None, bytes]]:
        batches = self._consumer.poll(timeout_ms=_POLL_MS)
        return [(m.key, m.value) for records in batches.values() for m in records]

    def close(self) -> None:
        self._consumer.close()


def dispatch(messages, streams: Mapping[str, Any], running, job_events: JobEvents) -> None:
    """Forward each control message to its running stream's actor, or refuse it as a job event."""
    from pipeline.live_watchlist import Rejection

    for key, value in messages:
        try:
            command = parse_command(value, key)
            if command.stream_id not in streams:
                raise CommandError(f"unknown stream {command.stream_id!r} (the job has "
                                   f"{', '.join(streams) or 'none'})", command.stream_id)
            if command.stream_id not in running:
                raise CommandError(f"stream {command.stream_id!r} has ended", command.stream_id)
        except CommandError as e:
            raw = _as_json(value)
            logger.warning("control command refused: %s (%s)", e, raw)
            if e.stream_id in running and e.stream_id in streams:
                streams[e.stream_id].submit_command.remote(Rejection(str(e), raw, "control_topic"))
            else:
                job_events.reject(str(e), raw, "control_topic")
            continue
        logger.info("control command for stream %s: %s", command.stream_id, command.command)
        streams[command.stream_id].submit_command.remote(command)


def reload_job(path: str, old_job, current: dict[str, tuple[WatchRule, ...]], streams: Mapping[str, Any], running,
               job_events: JobEvents) -> None:
    """SIGHUP: send each running stream the rules the job file now gives it; ``current`` is updated."""
    from pipeline.jobspec import JobSpecError, load_job

    try:
        new_job = load_job(path)
    except JobSpecError as e:
        logger.error("job file reload refused, nothing changed: %s", e)
        job_events.reject(f"job file reload refused: {e}", {"job_file": str(path)}, "sighup")
        return
    plan = plan_reload(old_job, new_job, current)
    for line in plan.refused:
        logger.error("job file reload: %s: a restart is needed for that; those changes are not applied", line)
    if not plan.rules:
        logger.info("job file reloaded: no watchlist changes")
    for sid, rules in plan.rules.items():
        current[sid] = rules
        if sid not in running:
            continue
        streams[sid].submit_command.remote(ControlCommand("set_watchlist", sid, rules=rules, source="sighup"))
        logger.info("job file reloaded: stream %s gets its new watchlist (%s)", sid, ", ".join(r.concept for r in rules))


def _as_json(value: bytes | None) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return (value or b"").decode(errors="replace")
