"""Choosing the device and dtype a model runs on, from user-facing strings."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the first GPU when there is one; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but no CUDA GPU is visible; use --device cpu or auto")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
        return torch.device(spec)
    raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def resolve_dtype(spec: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU and float32 on the CPU (where bf16 matmuls are slow)."""
    if isinstance(spec, torch.dtype):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise ValueError(f"unknown dtype {spec!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[spec]
