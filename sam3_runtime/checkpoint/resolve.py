"""Turning a checkpoint spec into local files: a directory, a weights file, or a hub repo id.

A spec is a local directory, a ``.pt``/``.pth`` or ``.safetensors`` file, or a hub repo id
(``facebook/sam3``, optionally ``facebook/sam3@revision``). Hub repos are downloaded with
huggingface_hub into its cache; an unreachable hub falls back to a complete cached snapshot.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sam3_runtime.checkpoint.errors import CheckpointError, hub_failure_kind, hub_failure_message

log = logging.getLogger(__name__)

CheckpointFormat = Literal["hf_dir", "official_pt", "safetensors_file"]

_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]
_HF_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
_HF_PATTERNS = _HF_FILES + _TOKENIZER_FILES
_OFFICIAL_PATTERNS = ["config.json", "*.pt", "*.pth", *_TOKENIZER_FILES]
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".json", ".bin", ".ckpt", ".tsv")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    format: CheckpointFormat
    weights_path: Path  # model.safetensors (or its .index.json), the .pt/.pth file, or the .safetensors file
    config_path: Path | None  # transformers-format config.json next to the weights, if any
    tokenizer_path: Path | None  # tokenizer.json next to the weights, if any
    model_id: str  # what outputs record: the repo id (with @revision when one was asked for) or the local path


def resolve_checkpoint(
    spec: str | Path,
    token: str | None = None,
    *,
    hub_timeout: float = 10.0,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> ResolvedCheckpoint:
    """Turn a checkpoint spec into local files, downloading from the hub when ``spec`` is a repo id.

    Hub access honours HF_TOKEN (or ``token``), HF_HUB_OFFLINE and HF_HOME/HF_HUB_CACHE (or ``cache_dir``).
    The metadata request and each ETag check wait at most ``hub_timeout`` seconds; a stalled download
    gives up after huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT (10 s by default). When the hub cannot be
    reached, a complete cached snapshot is used if there is one.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_dir(path.resolve(), str(path.resolve()))
    if path.is_file():
        return _resolve_file(path.resolve())
    m = _REPO_ID.fullmatch(text)
    if m is None or text.lower().endswith(_FILE_SUFFIXES) or ".." in text:
        raise CheckpointError(
            f"no such file or directory: {text!r}; pass an existing checkpoint directory or file, or a hub repo id such as facebook/sam3."
        )
    return _resolve_hub(m["repo"], m["rev"], token, hub_timeout, cache_dir, endpoint)


def _sibling(folder: Path, name: str) -> Path | None:
    return folder / name if (folder / name).is_file() else None


def _resolve_file(path: Path) -> ResolvedCheckpoint:
    formats: dict[str, CheckpointFormat] = {
        ".pt": "official_pt",
        ".pth": "official_pt",
        ".safetensors": "safetensors_file",
    }
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise CheckpointError(
            f"unsupported checkpoint file {path.name!r}: pass a .safetensors or .pt/.pth file, or a directory holding model.safetensors."
        )
    return ResolvedCheckpoint(
        fmt, path, _sibling(path.parent, "config.json"), _sibling(path.parent, "tokenizer.json"), str(path)
    )


def _resolve_dir(path: Path, model_id: str) -> ResolvedCheckpoint:
    config, tokenizer = _sibling(path, "config.json"), _sibling(path, "tokenizer.json")
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (path / name).is_file():
            return ResolvedCheckpoint("hf_dir", path / name, config, tokenizer, model_id)
    official = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())
    if official:
        chosen = next((p for p in official if p.name == "sam3.pt"), official[0])
        return ResolvedCheckpoint("official_pt", chosen, config, tokenizer, model_id)
    raise CheckpointError(
        f"directory {str(path)!r} holds neither model.safetensors nor a .pt checkpoint: pass the directory that holds the weights, or the weights file."
    )


def _cached_snapshot(repo: str, revision: str | None, cache_dir: str | Path | None) -> str | None:
    from huggingface_hub import snapshot_download

    for patterns in (_HF_PATTERNS, _OFFICIAL_PATTERNS):
        try:
            return snapshot_download(
                repo, revision=revision, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=True
            )
        except Exception as err:  # any failure here only means "no usable cached copy"
            log.debug("no cached snapshot of %s (%s)", repo, err)
    return None


def _resolve_hub(
    repo: str,
    revision: str | None,
    token: str | None,
    timeout: float,
    cache_dir: str | Path | None,
    endpoint: str | None,
) -> ResolvedCheckpoint:
    from huggingface_hub import HfApi, constants, snapshot_download

    model_id = repo if revision is None else f"{repo}@{revision}"
    if constants.is_offline_mode():
        folder = _cached_snapshot(repo, revision, cache_dir)
        if folder is None:
            raise CheckpointError(
                f"HF_HUB_OFFLINE is set and {model_id} is not in the hub cache: download it on a connected machine (hf download {repo}), or pass a local directory or file."
            )
        return _resolve_dir(Path(folder), model_id)
    try:
        # An explicit timeout here: huggingface_hub's shared HTTP client itself waits forever.
        info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision, timeout=timeout)
        files = [s.rfilename for s in info.siblings or []]
        has_hf = any(re.fullmatch(r"model(-.+)?\.safetensors", f) for f in files)
        if not has_hf and not any(f.endswith((".pt", ".pth")) for f in files):
            raise CheckpointError(
                f"{repo} holds neither model.safetensors nor a .pt checkpoint: pass a SAM 3 repo, directory or file."
            )
        folder = snapshot_download(
            repo,
            revision=info.sha,  # a commit hash, so no second metadata request
            cache_dir=cache_dir,
            allow_patterns=_HF_PATTERNS if has_hf else _OFFICIAL_PATTERNS,
            token=token,
            etag_timeout=timeout,
            endpoint=endpoint,
        )
    except CheckpointError:
        raise
    except Exception as err:
        kind = hub_failure_kind(err)
        folder = _cached_snapshot(repo, revision, cache_dir) if kind == "unreachable" else None
        if folder is None:
            raise CheckpointError(hub_failure_message(kind, repo, revision, err)) from err
        log.warning("the hub is unreachable (%s); using the cached snapshot of %s", type(err).__name__, model_id)
    return _resolve_dir(Path(folder), model_id)
