"""The shape of the code base: no import cycles, dependencies pointing downward, modules of a readable size.

The import graph is read from the source with ``ast`` (nothing is imported), module-level and
function-level imports alike: a cycle through a function-level import is still a cycle, it only
fails later. Imports under ``if TYPE_CHECKING:`` never run, so they make no cycle, but they
still count for the layering. Layers, top to bottom: ``pipeline`` (Ray actors, CLI) -> ``operators`` (Ray-free
building blocks) -> ``sam3_runtime`` (the model and the streaming engine).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sam3_runtime", "operators", "pipeline")
MAX_LINES = 400

# Modules allowed over MAX_LINES, with the reason.
OVER_MAX_LINES = {
    "sam3_runtime/official_keys.py": "declarative table: the official -> canonical checkpoint key rules",
}

# What a layer must not import (top-level package names of the import).
FORBIDDEN_IMPORTS = {
    "sam3_runtime": {"operators", "pipeline", "ray", "kafka", "pyarrow", "av"},
    "operators": {"pipeline", "ray"},
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted name as written (absolute), before mapping onto a project module
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``: seen by type checkers, never executed


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno, id(node) in type_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule pkg.sub when there is one
                sub = f"{base}.{alias.name}"
                found.append(Import(name, sub if sub in modules else base, node.lineno, id(node) in type_only))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def all_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    modules = project_modules(root, packages)
    return [imp for name, path in modules.items() for imp in _imports_of(name, path, modules)]


def _project_target(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import executes last (its longest known prefix), or None if external."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_cycles(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Strongly connected components of the project's executed imports that hold more than one module."""
    modules = project_modules(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in all_imports(root, packages):
        target = _project_target(imp.target, modules)
        # a package's ``from . import name`` of a plain attribute resolves to the package itself: no edge
        if target is not None and target != imp.importer and not imp.type_only:
            graph[imp.importer].add(target)

    # Tarjan's algorithm, iterative so deep graphs cannot hit the recursion limit
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_import_graph_sees_the_project():
    modules = project_modules()
    assert {"sam3_runtime.checkpoint", "sam3_runtime.modeling.position", "operators", "pipeline"} <= set(modules)
    edges = {(imp.importer, _project_target(imp.target, modules)) for imp in all_imports()}
    # relative imports, imports of a submodule and of a package are all resolved
    assert ("sam3_runtime.modeling.tracker.tracker_model", "sam3_runtime.modeling.tracker.common") in edges
    assert ("sam3_runtime.checkpoint.load", "sam3_runtime.checkpoint.keys") in edges
    assert ("sam3_runtime.model", "sam3_runtime.checkpoint") in edges


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_cycles_through_function_level_and_relative_imports_are_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .leaf import VALUE\n",
        "pkg/sub/leaf.py": "VALUE = 1\n",
        "pkg/first.py": "from pkg import second\n",
        "pkg/second.py": "def later():\n    from .sub import third\n",
        "pkg/sub/third.py": "import pkg.first\n",
        # a type-only import back makes no cycle: it never runs
        "pkg/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import user\n",
        "pkg/user.py": "from pkg.typed import *\n",
    })
    assert import_cycles(tmp_path, ("pkg",)) == [["pkg.first", "pkg.second", "pkg.sub.third"]]


def test_no_import_cycles():
    assert import_cycles() == []


def test_layers_import_only_downward():
    violations = []
    for imp in all_imports():
        layer = imp.importer.split(".")[0]
        top = imp.target.split(".")[0]
        if top in FORBIDDEN_IMPORTS.get(layer, set()):
            violations.append(f"{imp.importer}:{imp.line} imports {imp.target}")
    assert violations == []


def test_modules_stay_readable_in_size():
    too_long = {}
    for path in project_modules().values():
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and rel not in OVER_MAX_LINES:
            too_long[rel] = lines
    assert too_long == {}


def test_size_exceptions_are_still_needed():
    # an exception outlives its reason unnoticed unless this fails once the module is small enough
    small = [rel for rel in OVER_MAX_LINES if len((ROOT / rel).read_text().splitlines()) <= MAX_LINES]
    assert small == []


def test_every_project_import_names_a_module_that_exists():
    """A module moved or renamed leaves no import behind, function-level ones included (those only
    fail when their function runs): across the packages, the benchmarks and the tests."""
    everything = project_modules(packages=(*PACKAGES, "bench", "tests"))
    missing = [
        f"{everything[imp.importer].relative_to(ROOT)}:{imp.line}: {imp.target}"
        for name, path in everything.items()
        for imp in _imports_of(name, path, everything)
        if imp.target.split(".")[0] in {*PACKAGES, "bench", "tests"}
        and imp.target not in everything
    ]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)
