"""The one way engine code reads device tensors on the host, so host syncs can be counted.

On a GPU every read of a tensor's values by Python (``.item()``, ``.tolist()``, ``.cpu()``,
``bool(t)``, ``nonzero`` sizing) waits for the device to finish all queued work. The engine's
hot path reads through :func:`to_host` only, batching what it needs into as few reads as it
can. A CPU run cannot observe such stalls, so tests and benchmarks count calls instead:

    with count_host_reads() as reads:
        engine.step(frames)
    assert reads.count <= 2
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class HostReads:
    """Host reads seen inside one :func:`count_host_reads` block."""

    count: int = 0
    elements: int = 0


_active: contextvars.ContextVar[HostReads | None] = contextvars.ContextVar("sam3_host_reads", default=None)


@contextlib.contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count :func:`to_host` calls (each one device sync) made inside the block."""
    reads = HostReads()
    token = _active.set(reads)
    try:
        yield reads
    finally:
        _active.reset(token)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Copy ``tensors`` to host numpy arrays in one device sync (counted as one read).

    Tensors of one dtype travel as a single flat copy; mixed dtypes are grouped by dtype, still
    behind a single wait for the device.
    """
    reads = _active.get()
    if reads is not None:
        reads.count += 1
        reads.elements += sum(t.numel() for t in tensors)
    return _copy(tensors)


def _copy(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    if not tensors:
        return []
    out: list[np.ndarray | None] = [None] * len(tensors)
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    pending = []
    for dtype, members in groups.items():
        parts = [tensors[i].detach().reshape(-1) for i in members]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        if flat.device.type == "cuda":
            staged = torch.empty(flat.shape, dtype=dtype, pin_memory=True)
            staged.copy_(flat, non_blocking=True)
        else:
            staged = flat
        pending.append((members, staged))
    if any(s.is_pinned() for _, s in pending):
        torch.cuda.current_stream().synchronize()
    for members, staged in pending:
        host = _numpy(staged)
        start = 0
        for i in members:
            n = tensors[i].numel()
            out[i] = host[start : start + n].reshape(tuple(tensors[i].shape))
            start += n
    return out  # type: ignore[return-value]


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()
