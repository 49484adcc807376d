"""Reading checkpoint weights (safetensors or torch files) and loading them into a model.

Whatever the file's key space, :func:`load_state_dict` returns canonical keys (see
:mod:`sam3_runtime.checkpoint.keys`); :func:`load_strict` puts them into a model and names the
keys that do not fit when it cannot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sam3_runtime.checkpoint.errors import CheckpointError
from sam3_runtime.checkpoint.keys import KeyReport, check_state_dict, to_canonical
from sam3_runtime.checkpoint.resolve import ResolvedCheckpoint


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
