"""Watchlist references: a name or path in the job file, replaced by the rules of its file.

Watchlist files hold a YAML *list* of rules (``- concept: forklift``). A name such as ``safety``
(``watchlists: {safety: safety}``, or a stream's ``watchlist: safety`` not defined inline) is
looked up as ``safety.yaml`` / ``.yml`` in: the ``watchlist_path`` directories, then
``$SAM3_WATCHLIST_PATH`` (``os.pathsep``-separated), then ``watchlists/`` and
``configs/watchlists/`` of the job file's directory and of each parent up to the repository root
(the first directory holding ``.git`` or ``pyproject.toml``). A reference containing ``/`` or
ending in ``.yaml`` / ``.yml`` is a path relative to the job file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.jobspec.common import exists
from pipeline.validation_errors import describe_kind
from pipeline.yaml_source import LineMap, LocatedError, YamlDocument, YamlPath, read_yaml

WATCHLIST_PATH_ENV = "SAM3_WATCHLIST_PATH"


def search_path(watchlist_path: Sequence[str | os.PathLike[str]], env: Mapping[str, str]) -> list[Path]:
    """The directories searched before those near the job file: the caller's, then the environment's."""
    return [Path(p) for p in watchlist_path] + [Path(p) for p in env.get(WATCHLIST_PATH_ENV, "").split(os.pathsep) if p]


def find_watchlist(ref: str, job_dir: Path, search: Sequence[Path] = ()) -> tuple[Path | None, list[Path]]:
    """The file a watchlist reference names (None if there is none) and the directories searched."""
    if "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml")):
        candidate = (job_dir / os.path.expanduser(ref)).resolve()
        return (candidate if exists(candidate, file=True) else None), [candidate.parent]
    dirs = list(search)
    for directory in (job_dir, *job_dir.parents):
        dirs += [directory / "watchlists", directory / "configs" / "watchlists"]
        if any((directory / marker).exists() for marker in (".git", "pyproject.toml")):
            break
    for directory in dirs:
        for suffix in (".yaml", ".yml"):
            if exists(directory / f"{ref}{suffix}", file=True):
                return (directory / f"{ref}{suffix}").resolve(), dirs
    return None, dirs


def resolve_watchlists(doc: YamlDocument, job_dir: Path, search: list[Path], env: Mapping[str, str]) -> None:
    """Replace watchlist references (strings) by the rule lists of their files, in the parsed
    document (before validation), grafting the files' line numbers so errors point into them."""
    data, lines = doc.data, doc.lines
    watchlists = data.get("watchlists", {})
    if not isinstance(watchlists, dict):
        return  # validation reports the type
    loaded: dict[Path, YamlDocument] = {}

    def load(ref: str, at: YamlPath, name: str) -> None:
        found, searched = find_watchlist(ref, job_dir, search)
        if found is None:
            known = [k for k, v in watchlists.items() if isinstance(v, list)]
            raise _missing_watchlist(ref, at, lines, known, searched)
        if found not in loaded:
            loaded[found] = _read_watchlist_file(found, env)
        watchlists[name] = loaded[found].data
        lines.graft(("watchlists", name), loaded[found].lines)

    for name, value in list(watchlists.items()):
        if isinstance(value, str):
            load(value, ("watchlists", name), name)
    streams = data.get("streams")
    for index, stream in enumerate(streams if isinstance(streams, list) else []):
        ref = stream.get("watchlist") if isinstance(stream, dict) else None
        if isinstance(ref, str) and ref.strip() and ref not in watchlists:
            load(ref, ("streams", index, "watchlist"), ref)
    index = data.get("index")
    ref = index.get("watchlist") if isinstance(index, dict) else None
    if isinstance(ref, str) and ref.strip() and ref not in watchlists:
        load(ref, ("index", "watchlist"), ref)
    if watchlists:
        data["watchlists"] = watchlists


def display_path(path: Path) -> str:
    """``path`` as error messages show it: relative to the working directory when below it."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def _read_watchlist_file(path: Path, env: Mapping[str, str]) -> YamlDocument:
    display = display_path(path)
    doc = read_yaml(path, display, env)
    if doc.data is None:
        raise LocatedError(display, None, (), "empty watchlist file (list its rules: '- concept: forklift')")
    if not isinstance(doc.data, list):
        raise LocatedError(display, 1, (), "a watchlist file is a YAML list of rules ('- concept: forklift', "
                                           f"one per item), not {describe_kind(doc.data)}")
    return doc


def _missing_watchlist(ref: str, at: YamlPath, lines: LineMap, known: list[str], searched: list[Path]) -> LocatedError:
    close = difflib.get_close_matches(ref, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    file_name = ref if "/" in ref or ref.endswith((".yaml", ".yml")) else f"{ref}.yaml"
    where = ", ".join(display_path(d) for d in dict.fromkeys(searched))
    loc = lines.locate(at)
    return LocatedError(loc.file, loc.line, at, f"unknown watchlist '{ref}' — {hint}(defined in the job: "
                                                f"{', '.join(known) or 'none'}; no file {file_name} in: {where})")
