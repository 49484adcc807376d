"""Live watchlist changes: control commands, their validation, and the rule changes they make.

A control command is one JSON object (Kafka value, keyed by stream id)::

    {"version": 1, "command": "add_concept", "stream_id": "cam-1", "concept": "forklift", "threshold": 0.6}

Commands: ``add_concept`` (``concept`` and optional rule fields), ``remove_concept``
(``concept``), ``set_threshold`` (``concept``, ``threshold``), ``set_rule`` (``concept`` and
the rule fields to change) and ``set_watchlist`` (``rules``: the stream's whole new list).
Rule fields are those of a job file's watchlist rule: ``threshold`` in (0, 1], ``min_frames``
>= 1, ``min_seconds`` >= 0, ``zones`` (pixel polygons; null: the whole frame).

:func:`parse_command` checks what can be checked without the stream (raising
:class:`CommandError`); :func:`plan_changes` turns a command into :class:`RuleChange` s against
the rules the stream has now (removing an unwatched concept is an error there); :func:`diff_rules`
is the same for two whole watchlists (a job file reloaded).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from operators.watchlist_rules import WatchRule

COMMAND_VERSION = 1
COMMANDS = ("add_concept", "remove_concept", "set_threshold", "set_rule", "set_watchlist")
RULE_FIELDS = ("threshold", "min_frames", "min_seconds", "zones")
ChangeSource = Literal["control_topic", "sighup"]
_COMMAND_FIELDS = {"add_concept": ("concept", *RULE_FIELDS), "remove_concept": ("concept",),
                   "set_threshold": ("concept", "threshold"), "set_rule": ("concept", *RULE_FIELDS),
                   "set_watchlist": ("rules",)}


class CommandError(ValueError):
    """A command that cannot be applied; ``str()`` names the problem, ``stream_id`` the stream it named (if any)."""

    def __init__(self, problem: str, stream_id: str | None = None):
        super().__init__(problem)
        self.stream_id = stream_id


@dataclass(frozen=True)
class ControlCommand:
    command: str  # one of COMMANDS
    stream_id: str
    concept: str | None = None  # every command but set_watchlist
    fields: Mapping[str, Any] = field(default_factory=dict)  # rule fields given (RULE_FIELDS)
    rules: tuple[WatchRule, ...] = ()  # set_watchlist: the whole new watchlist
    source: ChangeSource = "control_topic"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.command, "stream_id": self.stream_id}
        if self.concept is not None:
            out["concept"] = self.concept
        out.update(self.fields)
        if self.command == "set_watchlist":
            out["rules"] = [rule.to_dict() for rule in self.rules]
        return out


@dataclass(frozen=True)
class RuleChange:
    kind: Literal["add", "remove", "update"]
    concept: str
    old: WatchRule | None  # None for add
    new: WatchRule | None  # None for remove

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "concept": self.concept, "old": None if self.old is None else self.old.to_dict(),
                "new": None if self.new is None else self.new.to_dict()}


def parse_command(value: bytes | str, key: bytes | str | None = None, source: ChangeSource = "control_topic"
                  ) -> ControlCommand:
    """A control message read and checked on its own; raises :class:`CommandError` naming the problem."""
    key = key.decode(errors="replace") if isinstance(key, bytes) else key
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandError(f"malformed JSON: {e}", key) from None
    if not isinstance(data, dict):
        raise CommandError(f"a command is a JSON object, got {type(data).__name__}", key)
    stream_id = data.get("stream_id", key)
    if not isinstance(stream_id, str) or not stream_id:
        raise CommandError("no stream_id (give it in the command, or as the message key)", key)
    if key is not None and key != stream_id:
        raise CommandError(f"message key {key!r} differs from stream_id {stream_id!r}", stream_id)
    version = data.get("version", COMMAND_VERSION)
    if version != COMMAND_VERSION:
        raise CommandError(f"unsupported version {version!r} (this pipeline reads version {COMMAND_VERSION})",
                           stream_id)
    command = data.get("command")
    if command not in COMMANDS:
        raise CommandError(f"unknown command {command!r} (known: {', '.join(COMMANDS)})", stream_id)
    allowed = {"version", "command", "stream_id", *_COMMAND_FIELDS[command]}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CommandError(f"{command}: unexpected field(s) {', '.join(unknown)} (it takes {', '.join(sorted(allowed))})",
                           stream_id)
    try:
        if command == "set_watchlist":
            return ControlCommand(command, stream_id, rules=_rule_list(data.get("rules")), source=source)
        concept = _concept(data.get("concept"))
        fields = {name: _field(name, data[name]) for name in RULE_FIELDS if name in data}
        if command == "set_threshold" and "threshold" not in fields:
            raise ValueError("set_threshold needs a threshold")
        if command == "set_rule" and not fields:
            raise ValueError(f"set_rule needs at least one of {', '.join(RULE_FIELDS)}")
        if fields:
            WatchRule.from_any({"concept": concept, **fields})  # zones are checked here
    except ValueError as e:
        raise CommandError(f"{command}: {e}", stream_id) from None
    return ControlCommand(command, stream_id, concept, fields, source=source)


def plan_changes(current: Mapping[str, WatchRule], command: ControlCommand) -> list[RuleChange]:
    """The rule changes ``command`` makes to a stream watching ``current`` (concept -> rule); may be none."""
    if command.command == "set_watchlist":
        return diff_rules(current.values(), command.rules)
    concept = command.concept
    old = current.get(concept)
    if command.command == "add_concept":
        if old is not None:
            raise CommandError(f"add_concept: stream {command.stream_id!r} already watches {concept!r} "
                               "(change its rule with set_rule or set_threshold)", command.stream_id)
        return [RuleChange("add", concept, None, WatchRule.from_any({"concept": concept, **command.fields}))]
    if old is None:
        raise CommandError(f"{command.command}: stream {command.stream_id!r} does not watch {concept!r} "
                           f"(it watches {', '.join(sorted(current)) or 'nothing'})", command.stream_id)
    if command.command == "remove_concept":
        if len(current) == 1:
            raise CommandError(f"remove_concept: {concept!r} is the last concept of stream {command.stream_id!r} "
                               "(a stream watches at least one)", command.stream_id)
        return [RuleChange("remove", concept, old, None)]
    new = WatchRule.from_any({**old.to_dict(), **command.fields})
    return [] if new == old else [RuleChange("update", concept, old, new)]


def diff_rules(old: Iterable[Any], new: Iterable[Any]) -> list[RuleChange]:
    """What turns watchlist ``old`` into ``new``: removals first, then updates, then additions, each in list order."""
    before = {rule.concept: rule for rule in map(WatchRule.from_any, old)}
    after = {rule.concept: rule for rule in map(WatchRule.from_any, new)}
    removed = [RuleChange("remove", c, r, None) for c, r in before.items() if c not in after]
    updated = [RuleChange("update", c, before[c], r) for c, r in after.items() if c in before and before[c] != r]
    added = [RuleChange("add", c, None, r) for c, r in after.items() if c not in before]
    return removed + updated + added


def _concept(value: Any) -> str:
    if not isinstance(value, str) or not value.split():
        raise ValueError(f"needs a concept (a noun phrase such as 'forklift'), got {value!r}")
    return " ".join(value.split())  # as the job file reads it


def _field(name: str, value: Any) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name == "threshold" and not (number and 0.0 < value <= 1.0):
        raise ValueError(f"threshold must be a number in (0, 1], got {value!r}")
    if name == "min_frames" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"min_frames must be an integer >= 1, got {value!r}")
    if name == "min_seconds" and not (number and value >= 0 and math.isfinite(value)):
        raise ValueError(f"min_seconds must be a number >= 0, got {value!r}")
    if name == "zones" and value is not None and not isinstance(value, list):
        raise ValueError(f"zones must be a list of polygons or null, got {value!r}")
    return value


def _rule_list(value: Any) -> tuple[WatchRule, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("set_watchlist needs rules: a non-empty list of {concept, threshold, ...} objects")
    rules, seen = [], set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"rules[{index}] is not an object")
        unknown = sorted(set(item) - {"concept", *RULE_FIELDS})
        if unknown:
            raise ValueError(f"rules[{index}]: unexpected field(s) {', '.join(unknown)}")
        concept = _concept(item.get("concept"))
        if concept in seen:
            raise ValueError(f"rules[{index}]: concept {concept!r} appears twice (one rule per concept)")
        seen.add(concept)
        fields = {name: _field(name, item[name]) for name in RULE_FIELDS if name in item}
        rules.append(WatchRule.from_any({"concept": concept, **fields}))
    return tuple(rules)

