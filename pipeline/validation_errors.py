"""A pydantic ``ValidationError`` on a located YAML document, turned into one located line.

``FILE:LINE: field: problem (fix)``: the first problem, a misspelt key before anything else,
with what was found, what is expected and, for unknown keys, the nearest allowed one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.yaml_source import LocatedError, YamlDocument, YamlPath, format_path, key_text


class FieldProblem(ValueError):
    """Raised by a validator to blame a field *below* the one it validates (``rel_path``), e.g. a
    model validator pointing at ``streams[2].id``; the message still reads well without a file."""

    def __init__(self, rel_path: YamlPath, problem: str) -> None:
        self.rel_path, self.problem = tuple(rel_path), problem
        super().__init__(f"{format_path(self.rel_path)}: {problem}" if rel_path else problem)


_UNION_TAGS = {"str", "int", "float", "bool", "none"}
_EXPECTED = {
    "int": "an integer", "float": "a number", "bool": "a boolean (true or false)", "string": "a string", "str": "a string",
    "list": "a list", "tuple": "a list", "dict": "a mapping (key: value)", "model": "a mapping (key: value)",
    "path": "a path",
}
_LIMITS = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
           "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}


def describe_value(value: Any) -> str:
    """A short, one-line rendering of a config value for error messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, str | list | dict | tuple) else str(value)
    if len(text) <= 60:
        return text
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list | tuple) else text[:57] + "..."


def describe_kind(value: Any) -> str:
    """``a mapping`` / ``a list`` / ``a string`` / ...: what kind of YAML value ``value`` is."""
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "nothing (null)" if value is None else kinds.get(type(value), type(value).__name__)


def model_at(root: type[BaseModel], path: YamlPath) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``path`` (for listing its keys)."""
    node: Any = root
    for part in (*path, None):
        while typing.get_origin(node) in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(node) if isinstance(a, type) and issubclass(a, BaseModel)]
            containers = [a for a in typing.get_args(node) if typing.get_origin(a) in (list, dict)]
            node = (models or containers or [None])[0]
        if part is None:
            break
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str) and part in node.model_fields:
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) in (list, dict):
            node = typing.get_args(node)[-1]
        else:
            return None
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _data_path(data: Any, loc: tuple[str | int, ...]) -> YamlPath:
    """Pydantic's ``loc`` without its union / validator tags, as a path into the document."""
    out: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and (part in _UNION_TAGS or "[" in part):
            continue
        elif position == len(loc) - 1 and isinstance(node, dict):
            out.append(part)  # a missing or unknown key
    return tuple(out)


def _allowed_keys(path: YamlPath, root: type[BaseModel]) -> list[str]:
    """The keys the mapping holding ``path``'s last key accepts."""
    model = model_at(root, path[:-1])
    return list(model.model_fields) if model is not None else []


def _near_miss(path: YamlPath, root: type[BaseModel]) -> str | None:
    """The allowed key that the unknown key at ``path`` most likely misspells, if any."""
    if not path:
        return None
    close = difflib.get_close_matches(str(path[-1]), _allowed_keys(path, root), n=1)
    return close[0] if close else None


def _expected(error_type: str) -> str | None:
    if error_type == "int_from_float":
        return "a whole number"
    kind, _, rest = error_type.partition("_")
    return _EXPECTED.get(kind) if rest in ("type", "parsing", "attributes_type") else None


def _describe(error: Mapping[str, Any], path: YamlPath, root: type[BaseModel]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        shown = f"'{key}'" if key_text(key) == key else key_text(key)  # already quoted when escaped
        close = _near_miss(path, root)
        suggestion = f"did you mean '{close}'? " if close else ""
        return f"unknown key {shown} — {suggestion}(allowed here: {', '.join(_allowed_keys(path, root))})"
    if kind == "missing":
        return f"required key missing (add '{path[-1]}: ...')" if path else "required key missing"
    expected = _expected(kind)
    if expected is not None:
        return f"expected {expected}, got {describe_value(value)}"
    if kind in _LIMITS:
        words, key = _LIMITS[kind]
        return f"must be {words} {ctx.get(key)} (got {describe_value(value)})"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s) (got {ctx.get('actual_length')})"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} item(s) (got {ctx.get('actual_length')})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {describe_value(value)})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def locate_validation_error(error: ValidationError, doc: YamlDocument, root: type[BaseModel]) -> LocatedError:
    """The first problem of ``error`` as one located line, counting the rest.

    A misspelt key comes first (``strems:`` is the cause of ``streams: required key missing``,
    and the missing key it meant is then not reported at all); the rest follow in file order."""
    found: dict[YamlPath, list[tuple[str, str]]] = {}
    misspelt: set[YamlPath] = set()
    meant: set[YamlPath] = set()  # the known keys that misspelt keys were meant to be
    for item in error.errors():
        path = _data_path(doc.data, item["loc"])
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblem):
            path, problem = path + cause.rel_path, cause.problem
        else:
            problem = _describe(item, path, root)
        if item["type"] == "extra_forbidden" and (close := _near_miss(path, root)) is not None:
            misspelt.add(path)
            meant.add(path[:-1] + (close,))
        found.setdefault(path, []).append((item["type"], problem))
    for path in meant:
        if path in found and all(kind == "missing" for kind, _ in found[path]):
            del found[path]
    problems = []
    for path, items in found.items():
        expected = [e for e in (_expected(kind) for kind, _ in items) if e]
        if len(items) > 1 and len(expected) == len(items):  # one value failing every member of a union
            got = items[0][1].rsplit(", got ", 1)[-1]
            names = list(dict.fromkeys(expected))
            problem = f"expected {', '.join(names[:-1])} or {names[-1]}, got {got}"
        else:
            problem = items[0][1]
        problems.append((doc.lines.locate(path), path, problem))
    main = doc.lines.default.file
    problems.sort(key=lambda p: (p[1] not in misspelt, p[0].file != main, p[0].line))
    location, path, problem = problems[0]
    if len(problems) > 1:
        problem += f" [+{len(problems) - 1} more problem(s) after this one]"
    return LocatedError(location.file, location.line, path, problem)
