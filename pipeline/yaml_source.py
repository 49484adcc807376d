"""YAML config files whose every value knows the file and line it came from.

Config errors must point at a line (``lobby.yaml:14: streams[1].source: ...``), so documents are
composed into PyYAML nodes and converted to plain Python values by hand, recording the line of
every mapping key and sequence item under its *path* (``("streams", 1, "source")``). The same
walk expands ``${VAR}`` / ``${VAR:-default}`` references in string values and rejects duplicate
keys, which PyYAML would otherwise resolve silently in favour of the last one.
``pipeline/validation_errors.py`` turns a pydantic ``ValidationError`` on such a document into one
located line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

YamlPath = tuple[str | int, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
# "$${" is a literal "${"; "${...}" a reference; a "${" with no closing brace is a mistake.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_VALUES = 100_000  # keys, items and scalars of one document; a real job file has a few hundred


def format_path(path: YamlPath) -> str:
    """``("streams", 1, "source")`` -> ``streams[1].source``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{key_text(part)}" if out else key_text(part))
    return out


def key_text(key: str) -> str:
    """A mapping key as messages show it: as written, or quoted and escaped when it is empty or holds
    line breaks, control characters or edge spaces (which would split or blank the one-line message)."""
    key = str(key)
    return key if key and key.isprintable() and key == key.strip() else repr(key)


class LocatedError(ValueError):
    """A problem at a place in a config file; ``str()`` is the one-line ``FILE:LINE: FIELD: problem``."""

    def __init__(self, file: str, line: int | None, path: YamlPath, problem: str) -> None:
        self.file, self.line, self.path = file, line, tuple(path)
        self.problem = " ".join(problem.split())  # one line, whatever the source of the text
        where = file if line is None else f"{file}:{line}"
        field_path = format_path(self.path)
        super().__init__(f"{where}: {field_path}: {self.problem}" if field_path else f"{where}: {self.problem}")


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int


@dataclass
class LineMap:
    """Where each path of a (possibly multi-file) document was written."""

    default: Location
    lines: dict[YamlPath, Location] = field(default_factory=dict)

    def locate(self, path: YamlPath) -> Location:
        """The location of ``path``, or of its closest written ancestor (a missing key reports
        the line of the mapping that should hold it)."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                return found
        return self.default

    def graft(self, prefix: YamlPath, other: LineMap) -> None:
        """Record ``other``'s locations as if its document sat at ``prefix`` in this one."""
        self.lines[prefix] = other.default
        for path, location in other.lines.items():
            self.lines[prefix + path] = location


@dataclass
class YamlDocument:
    data: Any
    lines: LineMap


def read_yaml(path: Path, display: str, env: Mapping[str, str]) -> YamlDocument:
    """Read and parse ``path``; ``display`` is how error messages name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LocatedError(display, None, (), "file not found (check the path)") from None
    except IsADirectoryError:
        raise LocatedError(display, None, (), "is a directory, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise LocatedError(display, None, (), f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise LocatedError(display, None, (), f"cannot be read: {e.strerror or e}") from None
    return parse_yaml(text, display, env)


def parse_yaml(text: str, file: str, env: Mapping[str, str]) -> YamlDocument:
    """Parse one YAML document, expanding ``${VAR}`` references from ``env``."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            column = f", column {mark.column + 1}" if mark is not None else ""
            problem = e.problem or e.context or "cannot parse"
            hint = "use spaces, not tabs, to indent" if "\\t" in problem else "check indentation, colons and quoting"
            raise LocatedError(file, line, (), f"invalid YAML: {problem}{column} ({hint})") from None
        except yaml.YAMLError as e:
            raise LocatedError(file, None, (), f"invalid YAML: {e}") from None
        lines = LineMap(Location(file, 1))
        if node is None:
            return YamlDocument(None, lines)
        data = _Converter(loader, file, env, lines).convert(node, ())
        return YamlDocument(data, lines)
    finally:
        loader.dispose()


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, file: str, env: Mapping[str, str], lines: LineMap) -> None:
        self.loader, self.file, self.env, self.lines = loader, file, env, lines
        self.inside: set[int] = set()  # the collections being converted: an alias to one of them is a cycle
        self.values = 0  # aliases copy what they name, so nested ones can multiply a small file enormously

    def error(self, node: yaml.Node, path: YamlPath, problem: str) -> LocatedError:
        return LocatedError(self.file, node.start_mark.line + 1, path, problem)

    def alias_error(self, node: yaml.Node, path: YamlPath, problem: str) -> LocatedError:
        """An error at the key or item that holds ``node`` (an alias), not where its anchor was written."""
        written = self.lines.lines.get(path)
        return LocatedError(self.file, written.line, path, problem) if written else self.error(node, path, problem)

    def convert(self, node: yaml.Node, path: YamlPath) -> Any:
        self.values += 1
        if self.values > _MAX_VALUES:
            raise self.alias_error(node, path, f"more than {_MAX_VALUES} values once aliases are expanded "
                                         "(aliases nested in aliases? write the values out)")
        if not isinstance(node, yaml.CollectionNode):
            return self.scalar(node, path)
        if id(node) in self.inside:
            raise self.alias_error(node, path, "recursive alias: it names a mapping or list that contains it (remove it)")
        self.inside.add(id(node))
        try:
            return self.collection(node, path)
        finally:
            self.inside.discard(id(node))

    def collection(self, node: yaml.CollectionNode, path: YamlPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self.error(node, path, f"unsupported YAML tag {node.tag} (remove the tag)")
            items = []
            for index, item in enumerate(node.value):
                self.lines.lines[path + (index,)] = Location(self.file, item.start_mark.line + 1)
                items.append(self.convert(item, path + (index,)))
            return items
        raise self.error(node, path, f"unsupported YAML node {type(node).__name__}")

    def mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            raise self.error(node, path, f"unsupported YAML tag {node.tag} (remove the tag)")
        own = {id(key) for key, _ in node.value}
        for key, value in node.value:
            merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
            if key.tag == "tag:yaml.org,2002:merge" and any(m is node or id(m) in self.inside for m in merged):
                raise self.error(key, path, "recursive merge key: '<<' names a mapping that contains it (remove it)")
        try:
            self.loader.flatten_mapping(node)  # YAML merge keys ("<<: *defaults") come first
        except yaml.MarkedYAMLError as e:
            raise self.error(node, path, f"invalid merge key: {e.problem}") from None
        except RecursionError:  # PyYAML follows "<<: *x" inside x itself forever
            raise self.error(node, path, "recursive merge key: '<<' names a mapping that contains it") from None
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, path, "a key must be a plain name, not a list or mapping")
            # The key's text, not its YAML 1.1 type: "no:" and "on:" stay names, not booleans.
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in first_line and id(key_node) in own and first_line[key] > 0:
                raise self.error(key_node, path + (key,),
                                 f"duplicate key '{key}' (first at line {first_line[key]}); keep only one")
            # Merged keys are overridable (marked 0); keys written here are not.
            first_line[key] = line if id(key_node) in own else 0
            self.lines.lines[path + (key,)] = Location(self.file, line)
            out[key] = self.convert(value_node, path + (key,))
        return out

    def construct(self, node: yaml.ScalarNode, path: YamlPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            # PyYAML's constructors fail like this on text their tag cannot hold: "!!int x", a 13th month
            problem = f"'{node.value}' is not a valid {node.tag.rsplit(':', 1)[-1]}"
        raise self.error(node, path, f"cannot read value: {problem}")

    def scalar(self, node: yaml.ScalarNode, path: YamlPath) -> Any:
        value = self.construct(node, path)
        if not isinstance(value, str) or "${" not in value:
            return value
        expanded = self.expand(value, node, path)
        if node.style is not None:  # quoted: stays a string, whatever it now says
            return expanded
        # A plain scalar takes the type its expanded text would have had if written directly,
        # so "port: ${METRICS_PORT}" is a number and "fps: ${FPS:-null}" can be null.
        tag = self.loader.resolve(yaml.ScalarNode, expanded, (True, False))
        return self.construct(yaml.ScalarNode(tag, expanded, node.start_mark, node.end_mark), path)

    def expand(self, text: str, node: yaml.Node, path: YamlPath) -> str:
        def replace(match: re.Match[str]) -> str:
            whole = match.group(0)
            if whole == "$${":
                return "${"
            inner = match.group(1)
            if inner is None:
                raise self.error(node, path, "unterminated '${' (close it with '}', or write '$${' for a literal '${')")
            name, sep, default = inner.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                raise self.error(node, path, f"bad variable reference '{whole}' (write ${{NAME}} or ${{NAME:-default}})")
            if "${" in default:
                raise self.error(node, path, f"nested reference in the default of '{whole}' is not supported")
            value = self.env.get(name)
            if value:
                return value
            if sep:
                return default
            if value is not None:
                return value  # set but empty, and no default asked for
            raise self.error(node, path, f"environment variable {name} is not set "
                                         f"(export {name}=..., or write ${{{name}:-default}})")

        return _REFERENCE.sub(replace, text)
