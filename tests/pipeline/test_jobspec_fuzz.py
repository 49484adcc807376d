"""Fuzzing the job file loader from the shipped examples: whatever a job file says, loading it
either gives a JobSpec or raises JobSpecError whose text is one ``FILE:LINE: field: problem``
line, never another exception and never a traceback."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.jobspec import JobSpec, JobSpecError, parse_job

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "configs" / "examples"
EXAMPLES = {path.stem: yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES_DIR.glob("*.yaml"))}
ONE_LINE = re.compile(r"[^:]+:\d+: .+: .+")
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# deleting one of these (from a file that was valid) must be reported as that key missing
REQUIRED = [("streams",), ("streams", int, "id"), ("streams", int, "source"), ("streams", int, "watchlist"),
            ("watchlists", str, int, "concept"), ("sinks", "parquet", "path")]

# a key with its value on the same line, possibly the first key of a list item
SCALAR_LINE = re.compile(r"(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z_][\w.-]*): (?P<value>[^&*|>].*)")
SECTION_LINE = re.compile(r"(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z_][\w.-]*):")

HUGE = [1e308, -1e308, 10**30, -(10**30), 10**400, -(10**400), -1, 0, math.inf, -math.inf, math.nan]
ODD_TEXT = ["", " ", "\n", "a\u2028b", "x\x85y", "\x00", "${", "$${x}", "${NOPE}", "~", "~nobody/x", "x" * 5000,
            "é", "名前", "🚀 rocket", "\u200b", "a:b", "- a", "#"]
TAGGED = ["!!python/object:os.system x", "!!python/name:os.system ''", "!!python/object/apply:os.system [ls]",
          "!!binary aGVsbG8=", "!!binary //79", "!foo bar", "!foo", "!!str 5", "!!int 7", "!!int x", "!!float 1.5",
          "!!bool yes", "!!null ''", "!!timestamp 2001-12-14", "!!set {a: null}", "!!omap [a: 1]",
          "!!python/tuple [1, 2]", "!!map {a: 1}", "!!seq [1]", "!<tag:example.com,2000:x> 1"]
SECTION_TAGS = ["!!python/object:collections.OrderedDict", "!!omap", "!!set", "!foo", "!!map", "!!seq", "!!str"]


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=10**6)


def load(text: str) -> JobSpec | JobSpecError:
    """The job ``text`` loads, or fails with the one-line located error; anything else fails the test."""
    try:
        return parse_job(text, filename="job.yaml", base_dir=EXAMPLES_DIR, env={})
    except JobSpecError as error:
        message = str(error)
        assert message.splitlines() == [message], repr(message)
        assert ONE_LINE.fullmatch(message), repr(message)
        if error.file == "job.yaml":
            assert error.line is not None and 1 <= error.line <= len(text.splitlines()), message
        return error


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key and list index of ``node``, as paths from its root."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in children:
        out.append(prefix + (key,))
        out += paths(value, prefix + (key,))
    return out


def parent(data: Any, path: tuple) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def required(path: tuple) -> bool:
    return any(len(path) == len(pattern) and all(p == q if not isinstance(q, type) else isinstance(p, q)
                                                 for p, q in zip(path, pattern, strict=True)) for pattern in REQUIRED)


@st.composite
def example_and_path(draw, where=lambda path, value: True) -> tuple[str, Any, tuple]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    data = copy.deepcopy(EXAMPLES[name])
    choices = [p for p in paths(data) if where(p, parent(data, p)[p[-1]])]
    return name, data, draw(st.sampled_from(choices))


def yaml_values() -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                        st.sampled_from(HUGE + ODD_TEXT))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=6), inner, max_size=3), max_leaves=6)


# --- mutations of the parsed examples ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_load_after_a_round_trip(name):
    assert isinstance(load(dump(EXAMPLES[name])), JobSpec)


@FUZZ
@given(example_and_path())
def test_deleted_key(case):
    _, data, path = case
    del parent(data, path)[path[-1]]
    outcome = load(dump(data))
    if required(path):
        assert isinstance(outcome, JobSpecError), path
        assert outcome.path == path and "required key missing" in outcome.problem, str(outcome)


@FUZZ
@given(example_and_path(), yaml_values())
def test_wrong_type(case, value):
    _, data, path = case
    parent(data, path)[path[-1]] = value
    load(dump(data))


@FUZZ
@given(example_and_path(lambda path, value: isinstance(value, str)), st.text() | st.sampled_from(ODD_TEXT))
def test_unicode_value(case, text):
    _, data, path = case
    parent(data, path)[path[-1]] = text
    load(dump(data))


@FUZZ
@given(example_and_path(lambda path, value: isinstance(path[-1], str)), st.text(min_size=1) | st.sampled_from(ODD_TEXT))
def test_unicode_key(case, key):
    _, data, path = case
    holder = parent(data, path)
    renamed = {(key if k == path[-1] else k): v for k, v in holder.items()}
    holder.clear()
    holder.update(renamed)
    load(dump(data))


@FUZZ
@given(example_and_path(lambda path, value: not isinstance(value, dict | list)), st.sampled_from(HUGE))
def test_huge_number(case, number):
    _, data, path = case
    parent(data, path)[path[-1]] = number
    load(dump(data))


@FUZZ
@given(example_and_path(lambda path, value: isinstance(value, dict | list)), example_and_path())
def test_shared_node_becomes_an_alias(target, source):
    _, data, path = target
    _, _, into = source
    if into[: len(path)] == path or path[: len(into)] == into:
        return
    try:
        parent(data, into)[into[-1]] = parent(data, path)[path[-1]]  # the same object: dumped as &id / *id
    except (KeyError, IndexError, TypeError):
        return  # a path of another example
    load(dump(data))


# --- mutations of the text: tags, anchors, aliases, merge keys, duplicate keys ------------------

def example_lines(draw) -> list[str]:
    return dump(EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]).splitlines()


def matching(lines: list[str], pattern: re.Pattern[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if pattern.fullmatch(line)]


@FUZZ
@given(st.data())
def test_tagged_value(data):
    lines = example_lines(data.draw)
    if data.draw(st.booleans()):
        index = data.draw(st.sampled_from(matching(lines, SCALAR_LINE)))
        match = SCALAR_LINE.fullmatch(lines[index])
        lines[index] = lines[index][: match.start("value")] + data.draw(st.sampled_from(TAGGED))
    else:
        index = data.draw(st.sampled_from(matching(lines, SECTION_LINE)))
        lines[index] += " " + data.draw(st.sampled_from(SECTION_TAGS))
    load("\n".join(lines) + "\n")


@FUZZ
@given(st.data())
def test_anchor_and_alias(data):
    lines = example_lines(data.draw)
    anchor = data.draw(st.sampled_from(matching(lines, SCALAR_LINE) + matching(lines, SECTION_LINE)))
    alias = data.draw(st.sampled_from([i for i in matching(lines, SCALAR_LINE) if i != anchor]))
    match = SCALAR_LINE.fullmatch(lines[anchor])
    if match:
        lines[anchor] = f"{lines[anchor][: match.start('value')]}&a {match.group('value')}"
    else:
        lines[anchor] += " &a"
    lines[alias] = lines[alias][: SCALAR_LINE.fullmatch(lines[alias]).start("value")] + "*a"
    load("\n".join(lines) + "\n")


@FUZZ
@given(st.data())
def test_merge_key(data):
    lines = example_lines(data.draw)
    sections = matching(lines, SECTION_LINE)
    anchor = data.draw(st.sampled_from(sections + matching(lines, SCALAR_LINE)))
    into = data.draw(st.sampled_from([i for i in sections if i != anchor]))
    match = SCALAR_LINE.fullmatch(lines[anchor])
    lines[anchor] = f"{lines[anchor][: match.start('value')]}&m {match.group('value')}" if match else lines[anchor] + " &m"
    child = len(lines[into]) - len(lines[into].lstrip(" -")) + 2
    lines.insert(into + 1, " " * child + "<<: *m")
    load("\n".join(lines) + "\n")


@FUZZ
@given(st.data())
def test_duplicate_key_names_the_key_and_both_lines(data):
    lines = example_lines(data.draw)
    candidates = [i for i in matching(lines, SCALAR_LINE) if not SCALAR_LINE.fullmatch(lines[i]).group("item")]
    index = data.draw(st.sampled_from(candidates))
    match = SCALAR_LINE.fullmatch(lines[index])
    lines.insert(index + 1, f"{match.group('indent')}{match.group('key')}: {data.draw(st.sampled_from(['1', 'x']))}")
    error = load("\n".join(lines) + "\n")
    assert isinstance(error, JobSpecError)
    key = match.group("key")
    assert re.fullmatch(rf"job\.yaml:{index + 2}: (\S+\.)?{re.escape(key)}: duplicate key '{re.escape(key)}' "
                        rf"\(first at line {index + 1}\); keep only one", str(error)), str(error)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_duplicate_section(name):
    text = dump(EXAMPLES[name])
    first = text.splitlines().index("engine:") + 1
    error = load(text + "engine: {}\n")
    assert str(error) == (f"job.yaml:{len(text.splitlines()) + 1}: engine: duplicate key 'engine' "
                          f"(first at line {first}); keep only one")


# --- the command line: exit code 2 and one line on stderr ---------------------------------------

BAD_JOBS = {
    "misspelt key": dump(EXAMPLES["demo"]).replace("streams:", "strems:"),
    "wrong type": dump(EXAMPLES["lobby"]).replace("max_batch: 8", "max_batch: [8]"),
    "python tag": dump(EXAMPLES["archive"]).replace("device: auto", "device: !!python/object:os.system x"),
    "duplicate key": dump(EXAMPLES["lobby"]).replace("dtype: auto", "dtype: auto\n  dtype: float16"),
    "huge number": dump(EXAMPLES["demo"]).replace("max_batch: 8", "max_batch: 1.0e+400"),
    "unicode key": dump(EXAMPLES["demo"]).replace("fps: 5", "fps\u2028: 5"),
}


@pytest.mark.parametrize("name", sorted(BAD_JOBS))
def test_cli_exits_2_with_one_line(name, tmp_path, capsys):
    text = BAD_JOBS[name]
    assert text != dump(EXAMPLES["demo"]) and isinstance(load(text), JobSpecError)
    job = tmp_path / "bad.yaml"
    job.write_text(text, encoding="utf-8")
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.rstrip("\n")], repr(err)
    prefix = "sam3-stream: error: "
    assert err.startswith(f"{prefix}{job}:") and ONE_LINE.fullmatch(err.rstrip("\n").removeprefix(prefix)), err
