"""``engine.compile``: torch.compile for the two hot parts of a loaded model, in place.

What is compiled:

* the backbone blocks: every ViT block of the detector's vision encoder (``nn.Module.compile``,
  so module names and state-dict keys stay as they were). All blocks share one compiled code
  object per block kind (windowed, global), since parameters are graph inputs.
* the tracker step: the memory attention's per-object layers (``MemoryAttention.finish``; the
  whole module where it has none) and ``decode_masks`` (prompt encoder + SAM head), wrapped on
  the instances (the classes are untouched). ``condition_on_memory`` itself stays eager: it picks
  each object's memories with host-side tables, which compiled code would only split into pieces.

Shapes are bucketed so compiled graphs (and, on CUDA, their CUDA graphs) are reused instead of
recompiled for every new size: the backbone batch is padded up to 1, 2, 4, 8, 16 (then multiples
of 16) and the tracker's object count up to a power of two. Padding repeats the last real row
and the extra rows are cut off the results; every op involved is per image / per object, so
the real rows come out as without padding (tests/sam3_runtime/test_compile.py checks it).
Memory lengths (spatial memories, object pointers) are few and bounded by the memory rings;
the tracker is compiled with automatic dynamic shapes so they do not each get a graph forever.

On CUDA the default mode is "reduce-overhead" (CUDA graphs). A CUDA graph's outputs live in a
pool its next replay overwrites, so the tracker wrappers hand back copies.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

BACKBONE_BUCKETS = (1, 2, 4, 8, 16)
_CPP_COMPILERS = ("g++", "c++", "clang++")


class CompileUnsupported(RuntimeError):
    """torch.compile cannot run on this setup; the message says what to install or change."""


@dataclass(frozen=True)
class CompiledParts:
    """What ``compile_model`` did, for logs and the engine's ``ready()`` report."""

    backend: str
    mode: str | None
    backbone_blocks: int
    tracker_methods: tuple[str, ...]


def backbone_bucket(batch: int) -> int:
    """The batch the backbone runs at for ``batch`` frames: 1, 2, 4, 8, 16, then multiples of 16."""
    if batch <= 0:
        return batch
    for size in BACKBONE_BUCKETS:
        if batch <= size:
            return size
    last = BACKBONE_BUCKETS[-1]
    return -(-batch // last) * last


def object_bucket(objects: int) -> int:
    """The object count the tracker runs at: the next power of two."""
    return objects if objects <= 1 else 1 << (objects - 1).bit_length()


def compile_problem(device: torch.device | str, backend: str = "inductor",
                    env: Mapping[str, str] | None = None) -> str | None:
    """Why torch.compile with ``backend`` cannot run on ``device`` here, or None when it can.

    ``env`` (default ``os.environ``) is where a C++ compiler is looked up (``CXX``, ``PATH``).
    """
    device = torch.device(device)
    env = os.environ if env is None else env
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile: install torch 2.1 or newer, or set engine.compile: false"
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        return f"unknown torch.compile backend {backend!r}: use one of {', '.join(sorted(known))}"
    if backend != "inductor":
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "engine.compile on CUDA needs Triton (pip install triton), or set engine.compile: false"
        return None
    if device.type == "cpu":
        if _find_cpp_compiler(env) is None:
            return ("engine.compile on the CPU needs a C++ compiler (none of CXX, g++, c++, clang++ found on PATH): "
                    "install g++, or set engine.compile: false")
        return None
    return f"engine.compile supports cpu and cuda devices, not {device.type}: set engine.compile: false"


def _find_cpp_compiler(env: Mapping[str, str]) -> str | None:
    path = env.get("PATH", "")
    names = ([env["CXX"]] if env.get("CXX") else []) + list(_CPP_COMPILERS)
    return next((found for name in names if (found := shutil.which(name, path=path))), None)


def compile_model(model: nn.Module, device: torch.device | str, *, backend: str = "inductor",
                  mode: str | None = None, env: Mapping[str, str] | None = None) -> CompiledParts:
    """Compile ``model``'s (a ``Sam3Model``) backbone blocks and tracker step in place.

    ``mode`` None picks "reduce-overhead" (CUDA graphs) for inductor on CUDA and torch's default
    elsewhere. Raises ``CompileUnsupported`` (one line, with the fix) before touching the model
    when this setup cannot compile (``env``: see ``compile_problem``).
    """
    device = torch.device(device)
    if "decode_masks" in vars(model.tracker_model):
        raise ValueError("this model is compiled already: compile a freshly loaded model once")
    problem = compile_problem(device, backend, env)
    if problem is not None:
        raise CompileUnsupported(problem)
    if mode is None and backend == "inductor" and device.type == "cuda":
        mode = "reduce-overhead"
    graphs = device.type == "cuda" and (backend == "cudagraphs" or mode in ("reduce-overhead", "max-autotune"))
    backbone = model.detector_model.vision_encoder.backbone
    for block in backbone.layers:
        # automatic dynamic shapes: a second batch bucket makes the batch symbolic instead of compiling
        # one graph per bucket and block kind (that would pass dynamo's recompile limit of 8)
        block.compile(backend=backend, mode=mode, dynamic=None)
    backbone.forward = _batch_bucketed(backbone.forward, graphs=graphs)
    tracker = model.tracker_model
    compiled = ["decode_masks"]
    decode = torch.compile(tracker.decode_masks, backend=backend, mode=mode, dynamic=None)
    tracker.decode_masks = _object_bucketed(decode, _first_rows, _per_object_inputs, copy_outputs=graphs)
    attention = tracker.memory_attention
    if hasattr(attention, "finish"):
        # the per-object layers after the per-frame start; choosing what to attend to (layout groups,
        # host-side tables) stays eager in condition_on_memory
        finish = torch.compile(attention.finish, backend=backend, mode=mode, dynamic=None)
        attention.finish = _object_bucketed(finish, _first_rows, _first_three_inputs, copy_outputs=graphs)
        compiled.append("memory_attention.finish")
    else:
        attention.compile(backend=backend, mode=mode, dynamic=None)
        compiled.append("memory_attention")
    parts = CompiledParts(backend, mode, len(backbone.layers), tuple(compiled))
    logger.info("compiled %d backbone blocks and the tracker step (%s) with torch.compile backend=%s mode=%s; "
                "the first steps of each batch size compile (slow)", parts.backbone_blocks,
                ", ".join(parts.tracker_methods), backend, mode or "default")
    return parts


def _batch_bucketed(forward: Callable[[Tensor], Tensor], *, graphs: bool) -> Callable[[Tensor], Tensor]:
    """``forward(pixels [B, ...])`` run at the bucketed batch; the padding frames are cut off again.
    With CUDA graphs each call starts a new graph step and its result is copied out of the pool."""

    def run(pixel_values: Tensor) -> Tensor:
        batch = pixel_values.shape[0]
        target = backbone_bucket(batch)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        padded = pixel_values if target == batch else _pad_rows(pixel_values, batch, target)
        out = forward(padded)[:batch]
        return out.clone() if graphs else out

    return run


def _first_rows(args: tuple, kwargs: dict) -> int:
    """Objects of a call whose first argument has one row per object."""
    return (args[0] if args else next(iter(kwargs.values()))).shape[0]


def _per_object_inputs(args: tuple, kwargs: dict, fn: Callable[[Tensor], Tensor], rows: int) -> tuple[tuple, dict]:
    """``decode_masks``: every input is per object or shared (batch 1), so any tensor with N rows is per object."""
    return _map_rows((args, kwargs), rows, fn)


def _first_three_inputs(args: tuple, kwargs: dict, fn: Callable[[Tensor], Tensor], rows: int) -> tuple[tuple, dict]:
    """``finish(x, key, value, rope, ...)``: only x, key and value are per object (RoPE tables have a row per
    token, which may happen to equal N)."""
    if len(args) < 3:
        raise TypeError("memory_attention.finish is called as finish(x, key, value, ...)")
    return (*(_map_rows(a, rows, fn) for a in args[:3]), *args[3:]), kwargs


def _object_bucketed(fn: Callable[..., Any], count: Callable[[tuple, dict], int], pad_inputs, *,
                     copy_outputs: bool) -> Callable[..., Any]:
    """``fn`` run with its per-object inputs (``pad_inputs``) padded from ``count`` (N) rows to
    ``object_bucket(N)``; outputs cut back to N (and copied out of a CUDA graph's pool)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        n = count(args, kwargs)
        target = object_bucket(n)
        if target == n:
            out = fn(*args, **kwargs)
            return _map_rows(out, n, lambda t: t.clone()) if copy_outputs else out
        args, kwargs = pad_inputs(args, kwargs, lambda t: _pad_rows(t, n, target), n)
        out = fn(*args, **kwargs)
        return _map_rows(out, target, lambda t: t[:n].clone() if copy_outputs else t[:n])

    return run


def _pad_rows(t: Tensor, n: int, target: int) -> Tensor:
    """``t [n, ...]`` -> ``[target, ...]``, the last row repeated (a real input: no NaN or empty-mask paths)."""
    return torch.cat((t, t[-1:].expand(target - n, *t.shape[1:])))


def _map_rows(value: Any, rows: int, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor (inside tuples, lists, dicts, dataclasses) with ``rows`` rows."""
    if isinstance(value, Tensor):
        return fn(value) if value.ndim and value.shape[0] == rows else value
    if isinstance(value, tuple):
        return tuple(_map_rows(v, rows, fn) for v in value)
    if isinstance(value, list):
        return [_map_rows(v, rows, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_rows(v, rows, fn) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _map_rows(getattr(value, f.name), rows, fn)
                                             for f in dataclasses.fields(value) if f.init})
    return value
