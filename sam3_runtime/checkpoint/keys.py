"""Key spaces of SAM 3 checkpoints and how a state dict lines up with a model.

Canonical key space: the transformers-format checkpoint names (``detector_model.*``,
``tracker_model.*``, ``tracker_neck.*``), which are also our module names. The official ``sam3.pt``
names map into it by the rule table in :mod:`sam3_runtime.official_keys`; transformers'
``save_pretrained`` output needs only its doubled tracker prefix removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sam3_runtime.checkpoint.errors import CheckpointError, first_keys
from sam3_runtime.official_keys import convert_official

log = logging.getLogger(__name__)

Shape = tuple[int, ...]

_OFFICIAL_PREFIXES = ("detector.", "tracker.")
_SAVED_TRACKER_PREFIX = "tracker_model.tracker_model."  # what transformers' save_pretrained writes


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
            f"the checkpoint fills these SAM 3 keys twice: {first_keys(result.conflicts)}; it is not a SAM 3 sam3.pt."
        )
    out = result.state_dict
    if result.unknown:
        if strict:
            raise CheckpointError(
                f"the official checkpoint has {len(result.unknown)} keys SAM 3 does not use ({first_keys(result.unknown)}): "
                "pass the SAM 3 sam3.pt or a transformers-format model.safetensors."
            )
        log.warning(
            "official checkpoint: %d unknown keys kept as they are: %s", len(result.unknown), first_keys(result.unknown)
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
        return "; ".join(f"{len(keys)} {name}: {first_keys(keys)}" for name, keys in self._categories() if keys)

    def summary(self) -> str:
        """One line per category; the problem categories name their first few keys."""
        lines = [f"mapped: {len(self.mapped)}"]
        lines += [f"{name}: {len(keys)}" + (f" ({first_keys(keys)})" if keys else "") for name, keys in self._categories()]
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
