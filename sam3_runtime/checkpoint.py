"""Finding, reading and checking SAM 3 checkpoints.

Canonical key space: the transformers-format checkpoint names (``detector_model.*``,
``tracker_model.*``, ``tracker_neck.*``), which are also our module names. Two on-disk formats load
into it: the transformers ``model.safetensors`` and the official ``sam3.pt`` (mapped by the rule
table in :mod:`sam3_runtime.official_keys`).

A checkpoint spec is a local directory, a ``.pt``/``.pth`` or ``.safetensors`` file, or a hub repo id
(``facebook/sam3``, optionally ``facebook/sam3@revision``). Every failure a user can fix raises
:class:`CheckpointError` whose message is one sentence that says what to do.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sam3_runtime.official_keys import convert_official

log = logging.getLogger(__name__)

CheckpointFormat = Literal["hf_dir", "official_pt", "safetensors_file"]
Shape = tuple[int, ...]

_OFFICIAL_PREFIXES = ("detector.", "tracker.")
_SAVED_TRACKER_PREFIX = "tracker_model.tracker_model."  # what transformers' save_pretrained writes
_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]
_HF_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
_HF_PATTERNS = _HF_FILES + _TOKENIZER_FILES
_OFFICIAL_PATTERNS = ["config.json", "*.pt", "*.pth", *_TOKENIZER_FILES]
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".json", ".bin", ".ckpt", ".tsv")
_NETWORK_MODULES = ("httpx", "httpx2", "requests", "urllib3")
_SHOWN = 5  # how many keys a message names


class CheckpointError(ValueError):
    """A checkpoint spec or file that cannot be used as given.

    A ValueError because it is always about the input (a path, repo id, token or file contents), so
    callers that turn bad arguments into a usage error (CLI exit code 2) treat it the same way.
    """


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


# --- key spaces --------------------------------------------------------------------------------


def is_official_key_space(keys: Mapping[str, object]) -> bool:
    return any(k.startswith(_OFFICIAL_PREFIXES) for k in keys)


def convert_official_state_dict(sd: Mapping[str, torch.Tensor], *, strict: bool = True) -> dict[str, torch.Tensor]:
    """Official ``sam3.pt`` keys/tensors -> canonical keys/tensors (q/k/v split, cls row dropped, ...).

    Works on real or meta tensors. Keys that no rule knows raise (``strict``) or, with ``strict=False``,
    are logged and passed through unchanged, so that :func:`check_state_dict` lists them as unexpected.
    """
    result = convert_official(sd)
    if result.conflicts:
        raise CheckpointError(
            f"the checkpoint fills these SAM 3 keys twice: {_first(result.conflicts)}; it is not a SAM 3 sam3.pt."
        )
    out = result.state_dict
    if result.unknown:
        if strict:
            raise CheckpointError(
                f"the official checkpoint has {len(result.unknown)} keys SAM 3 does not use ({_first(result.unknown)}): "
                "pass the SAM 3 sam3.pt or a transformers-format model.safetensors."
            )
        log.warning(
            "official checkpoint: %d unknown keys kept as they are: %s", len(result.unknown), _first(result.unknown)
        )
        out.update({k: sd[k] for k in result.unknown})
    return out


def normalize_hf_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept ``tracker_model.tracker_model.*`` (transformers' save_pretrained) as ``tracker_model.*``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_SAVED_TRACKER_PREFIX):
            key = key.removeprefix("tracker_model.")
        if key in out:
            raise CheckpointError(
                f"the checkpoint holds {key} under both tracker prefixes: keep one copy of the tracker weights."
            )
        out[key] = value
    return out


def to_canonical(sd: Mapping[str, torch.Tensor], *, strict: bool = True) -> dict[str, torch.Tensor]:
    """Either supported key space (told apart by its prefixes) -> canonical keys."""
    return convert_official_state_dict(sd, strict=strict) if is_official_key_space(sd) else normalize_hf_keys(sd)


def read_key_list_tsv(path: str | Path) -> dict[str, Shape]:
    """Canonical key -> shape from a reference listing (``key<TAB>shape<TAB>dtype``, shape like ``1x577x1024``).

    Either format is accepted: official names go through the same conversion as real weights
    (on meta tensors, so nothing is allocated).
    """
    shapes: dict[str, Shape] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")[:2]
            shapes[key] = tuple(int(d) for d in shape.split("x")) if shape else ()
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: tuple(v.shape) for k, v in to_canonical(meta).items()}


# --- checking ----------------------------------------------------------------------------------


def _shape(v: torch.Tensor | Shape) -> Shape:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)


def _fmt(shape: Shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


@dataclass(frozen=True)
class KeyReport:
    """How a state dict (``actual``) lines up with what a model or key listing expects."""

    mapped: list[str]  # on both sides, same shape
    missing: list[str]  # expected, absent
    unexpected: list[str]  # present, not expected
    wrong_shape: list[tuple[str, Shape, Shape]]  # (key, expected shape, actual shape)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def _categories(self) -> list[tuple[str, list[str]]]:
        shapes = [f"{k} (expected {_fmt(e)}, got {_fmt(a)})" for k, e, a in self.wrong_shape]
        return [("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", shapes)]

    def problems(self) -> str:
        """The problem categories on one line, e.g. ``2 missing: a, b; 1 unexpected: c``."""
        return "; ".join(f"{len(keys)} {name}: {_first(keys)}" for name, keys in self._categories() if keys)

    def summary(self) -> str:
        """One line per category; the problem categories name their first few keys."""
        lines = [f"mapped: {len(self.mapped)}"]
        lines += [f"{name}: {len(keys)}" + (f" ({_first(keys)})" if keys else "") for name, keys in self._categories()]
        return "\n".join(lines)


def check_state_dict(
    expected: Mapping[str, Shape | torch.Tensor], actual: Mapping[str, Shape | torch.Tensor]
) -> KeyReport:
    """Compare key sets and shapes; values may be shapes or tensors (meta tensors too)."""
    mapped, missing, wrong = [], [], []
    for key, want in expected.items():
        if key not in actual:
            missing.append(key)
        elif _shape(actual[key]) != _shape(want):
            wrong.append((key, _shape(want), _shape(actual[key])))
        else:
            mapped.append(key)
    return KeyReport(mapped, missing, [k for k in actual if k not in expected], wrong)


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, assign: bool | None = None) -> KeyReport:
    """``model.load_state_dict(sd, strict=True)``, failing with a message that names the problem keys.

    ``sd`` is in canonical keys, the model's own names. ``assign`` (default: whether the model has
    meta tensors) puts the checkpoint's tensors in place of the model's instead of copying into them;
    non-persistent buffers are not in any checkpoint, so a meta-built model must create those itself.
    """
    own = model.state_dict()
    report = check_state_dict(own, sd)
    if not report.ok:
        raise CheckpointError(
            f"the checkpoint does not fit the {type(model).__name__} ({report.problems()}): "
            "use the config that belongs to this checkpoint."
        )
    if assign is None:
        assign = any(t.is_meta for t in own.values())
    model.load_state_dict(sd, strict=True, assign=assign)
    return report


# --- resolving ---------------------------------------------------------------------------------


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


def _hub_failure(err: Exception) -> str:
    """Sort a hub exception into gated / revision / not_found / auth / unreachable / other."""
    from huggingface_hub import errors

    if isinstance(err, errors.GatedRepoError):
        return "gated"
    if isinstance(err, errors.RevisionNotFoundError):
        return "revision"
    if isinstance(err, errors.RepositoryNotFoundError):
        return "not_found"
    if isinstance(err, errors.HfHubHTTPError):
        return "auth" if getattr(err.response, "status_code", None) in (401, 403) else "unreachable"  # else: hub down
    if isinstance(err, OSError | TimeoutError) or type(err).__module__.split(".")[0] in _NETWORK_MODULES:
        return "unreachable"
    return "other"


def _hub_message(kind: str, repo: str, revision: str | None, err: Exception) -> str:
    return {
        "gated": f"{repo} is gated: accept the licence on https://huggingface.co/{repo} and set HF_TOKEN, or pass a local directory or file.",
        "not_found": f"{repo!r} is neither a local path nor a hub model repo you can access: check the spelling, set HF_TOKEN if it is private, or pass a local directory or file.",
        "revision": f"revision {revision!r} does not exist in {repo}: pass an existing branch, tag or commit, or leave out the @revision.",
        "auth": f"the hub refused access to {repo}: set HF_TOKEN to a valid read token that can see it, or pass a local directory or file.",
        "unreachable": f"the hub is unreachable ({type(err).__name__}) and {repo} is neither cached nor a local path: pass a local directory or file, or set HF_HUB_OFFLINE=1 with a cached copy.",
    }.get(kind, f"downloading {repo} failed ({type(err).__name__}: {err}): pass a local directory or file instead.")


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
        kind = _hub_failure(err)
        folder = _cached_snapshot(repo, revision, cache_dir) if kind == "unreachable" else None
        if folder is None:
            raise CheckpointError(_hub_message(kind, repo, revision, err)) from err
        log.warning("the hub is unreachable (%s); using the cached snapshot of %s", type(err).__name__, model_id)
    return _resolve_dir(Path(folder), model_id)


# --- loading -----------------------------------------------------------------------------------


def load_state_dict(
    resolved: ResolvedCheckpoint, *, device: str | torch.device = "cpu", meta: bool = False
) -> dict[str, torch.Tensor]:
    """Read the weights and return them in canonical keys, whichever key space the file uses.

    ``meta=True`` returns meta tensors of the stored shapes and dtypes without reading the data
    (safetensors headers only; a ``.pt`` is memory-mapped, not read).
    """
    path = resolved.weights_path
    try:
        if resolved.format == "official_pt":
            sd = _load_torch(path, "cpu" if meta else device)
            if meta:
                sd = {k: torch.empty_like(v, device="meta") for k, v in sd.items()}
        else:
            shards = [path]
            if path.name.endswith(".index.json"):
                names = json.loads(path.read_text())["weight_map"].values()
                shards = [path.parent / n for n in sorted(set(names))]
            sd = {}
            for shard in shards:
                sd.update(_load_safetensors(shard, device, meta))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"cannot read {str(path)!r} as a {resolved.format} checkpoint ({type(err).__name__}: {err}): check that the file is complete, or download it again."
        ) from err
    return to_canonical(sd)


def _load_safetensors(path: Path, device: str | torch.device, meta: bool) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not meta:
        return load_file(str(path), device=str(device))
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            header = f.get_slice(key)  # reads the header entry only, never the data
            out[key] = torch.empty(header.get_shape(), dtype=_st_dtype(header.get_dtype()), device="meta")
    return out


def _st_dtype(name: str) -> torch.dtype:
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32"}
    names |= {"I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "C64": "complex64"}
    return getattr(torch, names.get(name, "float32"))


def _load_torch(path: Path, device: str | torch.device) -> Mapping[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        obj = torch.load(path, map_location=device, weights_only=True)  # legacy (pre-zip) files cannot be mapped
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{str(path)!r} does not hold a state dict of tensors: pass the SAM 3 sam3.pt or a model.safetensors."
        )
    return obj
