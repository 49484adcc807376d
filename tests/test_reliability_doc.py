"""docs/reliability.md stays true: every test its table names exists, and every row names one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
COLUMNS = ["fault", "what the system did", "what was lost", "recovery time", "tests"]
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _rows() -> list[dict[str, str]]:
    lines = [line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS, f"{DOC}: the table's columns are {header}, expected {COLUMNS}"
    rows = []
    for line in lines[2:]:  # after the header and its --- line
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"{DOC}: a row has {len(cells)} cells, not {len(COLUMNS)}: {line}"
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")}


def test_every_row_names_tests_that_exist():
    rows = _rows()
    assert len(rows) >= 10
    missing = []
    for row in rows:
        named = TEST_ID.findall(row["tests"])
        assert named, f"{DOC}: the row {row['fault']!r} names no test as `tests/...py::test_name`"
        for path, name in named:
            file = REPO / path
            if not file.is_file() or name not in _test_functions(file):
                missing.append(f"{path}::{name} (row {row['fault']!r})")
    assert not missing, f"{DOC} names tests that do not exist: {missing}"


def test_every_row_says_what_was_lost_and_how_long_recovery_takes():
    for row in _rows():
        assert row["what was lost"] and row["recovery time"] and row["what the system did"], row
