"""Fixed-capacity tracker memory of one stream: the objects' recent memories in preallocated buffers.

SAM 2 / SAM 3 tracking reads, for an object on frame ``t`` (forward, streaming):

* spatial memories (``num_maskmem`` = 7 in SAM 3): up to ``max_cond_frame_num`` (4)
  conditioning frames (the prompted / re-conditioned ones; in a stream these are the most
  recent ones), temporal offset 0, plus the frames ``t-1 .. t-6`` (offset k for ``t-k``),
  taken from the non-conditioning frames or, when a conditioning frame fell out of the
  selected four, from that frame as if it were an ordinary one;
* object pointers (``max_object_pointers_in_encoder`` = 16): those of the selected
  conditioning frames at ``<= t`` (offset ``t - frame``) plus those of frames ``t-1 .. t-15``
  (offset k), taken from the same places.

So nothing older than 15 frames is ever read except the four most recent conditioning frames,
and :class:`ObjectMemory` keeps exactly that, per object, in fixed slots:

    slot            0 .. Kc-1            Kc .. Kc+R-1       (spatial, R = num_maskmem - 1)
    pointer slot    0 .. Kc-1            Kc .. Kc+Rp-1      (pointers, Rp = max_pointers - 1)
                    conditioning frames  recent frames, the newest ones win

Memory is ``O(capacity)`` (objects), independent of how many frames a stream has seen. A
conditioning frame pushed out by a fifth one moves to the recent slots, where it competes by
frame index like any other frame (this is the official SAM 2 / SAM 3 rule; transformers keeps
every conditioning frame's pointer forever, which differs only when an object has more than
four conditioning frames and one of them is more than 15 frames old).

Rows are object slots handed out from a free list (lowest row first): a row id stays valid
until ``remove_objects``; removed rows are cleared and reused. Capacity doubles when the free
list runs out (amortised O(1) per added object) and never shrinks except through
``from_state_dict``. The frame-index tables are small and live on the host (numpy), so that
writing and choosing slots never waits for the device; the memories live on the device.
Spatial memories are stored channels-last (``[cap, slots, h, w, Cm]``), the layout memory
attention consumes; ``bank()`` hands them out as ``[N, S, Cm, h, w]`` views. Their sine
position encoding is the same for every frame and is not stored (the tracker recomputes it).
Writes must come in non-decreasing frame order (streaming).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sam3_runtime.modeling.tracker import MemoryBank

Rows = Sequence[int] | np.ndarray | Tensor

STATE_FORMAT = 1


def _to_device(a: np.ndarray, device: torch.device) -> Tensor:
    """A small host array on the device; pinned and asynchronous on CUDA, so the host never waits."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _as_rows(rows: Rows) -> np.ndarray:
    if isinstance(rows, Tensor):
        rows = rows.detach().cpu().numpy()
    return np.asarray(rows, dtype=np.int64).reshape(-1)


class ObjectMemory:
    """Spatial memories and object pointers of all objects of one stream (see module docstring)."""

    def __init__(
        self,
        *,
        mem_dim: int,
        hidden_dim: int,
        feat_size: tuple[int, int],
        num_maskmem: int = 7,
        max_cond_frames: int = 4,
        max_object_pointers: int = 16,
        capacity: int = 8,
        device: torch.device | str | None = None,
        memory_dtype: torch.dtype = torch.bfloat16,
        pointer_dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_cond_frames < 1 or num_maskmem < 1 or max_object_pointers < 1:
            raise ValueError(
                "bounded memory needs max_cond_frames >= 1, num_maskmem >= 1 and max_object_pointers >= 1 "
                f"(got {max_cond_frames}, {num_maskmem}, {max_object_pointers}); an unlimited number of "
                "conditioning frames cannot be kept in fixed memory"
            )
        self.mem_dim, self.hidden_dim = mem_dim, hidden_dim
        self.feat_size = (int(feat_size[0]), int(feat_size[1]))
        self.num_maskmem, self.max_cond_frames, self.max_object_pointers = num_maskmem, max_cond_frames, max_object_pointers
        self.num_recent = num_maskmem - 1
        self.num_recent_pointers = max_object_pointers - 1
        self.spatial_slots = max_cond_frames + self.num_recent
        self.pointer_slots = max_cond_frames + self.num_recent_pointers
        self.device = torch.empty(0, device=device).device  # canonical ("cuda" -> "cuda:0"): batches compare it
        self.memory_dtype, self.pointer_dtype = memory_dtype, pointer_dtype
        self.capacity = 0
        h, w = self.feat_size
        self._spatial = torch.zeros(0, self.spatial_slots, h, w, mem_dim, dtype=memory_dtype, device=self.device)
        self._pointers = torch.zeros(0, self.pointer_slots, hidden_dim, dtype=pointer_dtype, device=self.device)
        self._spatial_frame = np.full((0, self.spatial_slots), -1, dtype=np.int64)
        self._pointer_frame = np.full((0, self.pointer_slots), -1, dtype=np.int64)
        self._live = np.zeros(0, dtype=bool)
        self._free: list[int] = []
        self._last_frame = -1
        self._grow(max(1, capacity))

    @classmethod
    def for_model(cls, model: Any, capacity: int = 8, device: torch.device | str | None = None,
                  memory_dtype: torch.dtype = torch.bfloat16, pointer_dtype: torch.dtype | None = None) -> ObjectMemory:
        """Sized for a ``TrackerModel`` or ``Sam3Model``; pointers default to the model's dtype."""
        tracker = getattr(model, "tracker_model", model)
        param = tracker.no_object_pointer
        cfg = tracker.cfg
        return cls(
            mem_dim=tracker.mem_dim,
            hidden_dim=tracker.hidden_dim,
            feat_size=tracker.prompt_encoder.image_embedding_size,
            num_maskmem=cfg.num_maskmem,
            max_cond_frames=cfg.max_cond_frame_num,
            max_object_pointers=cfg.max_object_pointers_in_encoder,
            capacity=capacity,
            device=device if device is not None else param.device,
            memory_dtype=memory_dtype,
            pointer_dtype=pointer_dtype or param.dtype,
        )

    # -- objects ---------------------------------------------------------------------------
    @property
    def num_objects(self) -> int:
        return int(self._live.sum())

    @property
    def live_rows(self) -> list[int]:
        return np.flatnonzero(self._live).tolist()

    @property
    def nbytes(self) -> int:
        """Bytes held (device buffers and host tables); proportional to capacity, not to frames."""
        tables = self._spatial_frame.nbytes + self._pointer_frame.nbytes + self._live.nbytes
        return self._spatial.nbytes + self._pointers.nbytes + tables

    def add_objects(self, n: int) -> list[int]:
        """Allocate ``n`` empty rows (lowest free rows first, growing capacity when needed)."""
        if len(self._free) < n:
            self._grow(max(2 * self.capacity, self.capacity + n - len(self._free)))
        rows = [heapq.heappop(self._free) for _ in range(n)]
        self._live[rows] = True
        return rows

    def remove_objects(self, rows: Rows) -> None:
        """Forget these objects; their rows go back to the free list (other rows keep their ids)."""
        r = _as_rows(rows)
        if r.size == 0:
            return
        if not self._live[r].all():
            raise KeyError(f"rows {r[~self._live[r]].tolist()} are not live objects")
        self._live[r] = False
        self._spatial_frame[r] = -1
        self._pointer_frame[r] = -1
        for row in r.tolist():
            heapq.heappush(self._free, row)

    def reset(self) -> None:
        """Forget every object and frame; keep the allocated buffers."""
        self._live[:] = False
        self._spatial_frame[:] = -1
        self._pointer_frame[:] = -1
        self._free = list(range(self.capacity))
        self._last_frame = -1

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        extra = capacity - old
        self._spatial = torch.cat((self._spatial, self._spatial.new_zeros(extra, *self._spatial.shape[1:])))
        self._pointers = torch.cat((self._pointers, self._pointers.new_zeros(extra, *self._pointers.shape[1:])))
        self._spatial_frame = np.concatenate((self._spatial_frame, np.full((extra, self.spatial_slots), -1, np.int64)))
        self._pointer_frame = np.concatenate((self._pointer_frame, np.full((extra, self.pointer_slots), -1, np.int64)))
        self._live = np.concatenate((self._live, np.zeros(extra, dtype=bool)))
        for row in range(old, capacity):
            heapq.heappush(self._free, row)
        self.capacity = capacity

    # -- writing ---------------------------------------------------------------------------
    def write(self, rows: Rows, frame_idx: int, memory_features: Tensor, object_pointers: Tensor,
              is_conditioning: bool | Sequence[bool] | Tensor = False) -> None:
        """Store the memories of ``rows`` on frame ``frame_idx``.

        memory_features: ``[n, Cm, h, w]`` (``TrackerModel.encode_memory``); object_pointers:
        ``[n, C]``; is_conditioning: one flag or one per row (prompted, mask-initialised or
        re-conditioned frames are conditioning frames). Writing a frame that a row already
        holds replaces it (e.g. a tracked frame re-written as a conditioning frame). Slots are
        chosen on the host; the device gets one small index transfer and two scatters.
        """
        r = _as_rows(rows)
        if r.size == 0:
            return
        if frame_idx < self._last_frame:
            raise ValueError(f"frame {frame_idx} written after frame {self._last_frame}: writes must not go back in time")
        if not self._live[r].all():
            raise KeyError(f"rows {r[~self._live[r]].tolist()} are not live objects")
        if len(np.unique(r)) != r.size:
            raise ValueError("a row appears twice in one write")
        self._last_frame = frame_idx
        flags = is_conditioning.cpu().numpy() if isinstance(is_conditioning, Tensor) else is_conditioning
        cond = np.broadcast_to(np.asarray(flags, dtype=bool).reshape(-1), r.shape)
        for table in (self._spatial_frame, self._pointer_frame):
            sub = table[r]
            sub[sub == frame_idx] = -1
            table[r] = sub

        kc, n = self.max_cond_frames, r.size
        # a conditioning frame takes an empty conditioning slot, else the oldest one's, which is demoted
        cond_rows, cond_src = r[cond], np.flatnonzero(cond)
        cond_slot = self._spatial_frame[cond_rows, :kc].argmin(axis=1)
        old = self._spatial_frame[cond_rows, cond_slot]
        dem_rows, dem_slots, dem_frames = cond_rows[old >= 0], cond_slot[old >= 0], old[old >= 0]
        # candidates for the recent slots: this frame's other rows and the demoted frames
        # (sources index the new data followed by the demoted data)
        rec_rows = np.concatenate((r[~cond], dem_rows))
        rec_frames = np.concatenate((np.full(n - cond_rows.size, frame_idx), dem_frames))
        rec_src = np.concatenate((np.flatnonzero(~cond), n + np.arange(dem_rows.size)))
        puts = []
        for table in (self._spatial_frame, self._pointer_frame):
            slot = kc + table[rec_rows, kc:].argmin(axis=1)
            take = table[rec_rows, slot] < rec_frames  # the newest frames win
            put_rows = np.concatenate((cond_rows, rec_rows[take]))
            put_slots = np.concatenate((cond_slot, slot[take]))
            table[put_rows, put_slots] = np.concatenate((np.full(cond_rows.size, frame_idx), rec_frames[take]))
            puts += [put_rows, put_slots, np.concatenate((cond_src, rec_src[take]))]

        sizes = [dem_rows.size, dem_slots.size] + [a.size for a in puts]
        dem_r, dem_s, *idx = _to_device(np.concatenate([dem_rows, dem_slots, *puts]), self.device).split(sizes)
        for store, data, (put_r, put_s, src) in (
            (self._spatial, memory_features.permute(0, 2, 3, 1), idx[:3]),  # channels-last, as stored
            (self._pointers, object_pointers, idx[3:]),
        ):
            data = data.to(self.device, store.dtype)
            if dem_rows.size:
                data = torch.cat((data, store[dem_r, dem_s]))
            store[put_r, put_s] = data[src]

    # -- reading ---------------------------------------------------------------------------
    def bank(self, rows: Rows, frame_idx: int) -> MemoryBank:
        """The memory bank of ``rows`` for tracking frame ``frame_idx`` (see ``gather_banks``)."""
        return gather_banks([(self, rows, frame_idx)])

    def _selection(self, rows: np.ndarray, frame_idx: int) -> tuple[np.ndarray, ...]:
        """Host-side validity and temporal offsets of every slot of ``rows`` at ``frame_idx``."""
        kc = self.max_cond_frames
        sf, pf = self._spatial_frame[rows], self._pointer_frame[rows]
        s_age, p_age = frame_idx - sf, frame_idx - pf
        s_valid = np.concatenate((sf[:, :kc] >= 0, (s_age[:, kc:] >= 1) & (s_age[:, kc:] <= self.num_recent)), axis=1)
        s_valid &= sf >= 0
        s_off = s_age.copy()
        s_off[:, :kc] = 0  # conditioning frames: temporal slot 0, whatever their age
        p_valid = np.concatenate(
            ((pf[:, :kc] >= 0) & (p_age[:, :kc] >= 0), (p_age[:, kc:] >= 1) & (p_age[:, kc:] <= self.num_recent_pointers)),
            axis=1,
        )
        p_valid &= pf >= 0
        return s_valid, s_off, p_valid, p_age

    def _geometry(self) -> tuple:
        return (self.mem_dim, self.hidden_dim, self.feat_size, self.num_maskmem, self.max_cond_frames,
                self.max_object_pointers, self.memory_dtype, self.pointer_dtype, self.device)

    # -- moving a stream -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain dict (CPU tensors, ints) of the live rows, for ``from_state_dict`` on another engine."""
        live = np.flatnonzero(self._live)
        idx = torch.from_numpy(live).to(self.device)
        return {
            "format": STATE_FORMAT,
            "mem_dim": self.mem_dim,
            "hidden_dim": self.hidden_dim,
            "feat_size": list(self.feat_size),
            "num_maskmem": self.num_maskmem,
            "max_cond_frames": self.max_cond_frames,
            "max_object_pointers": self.max_object_pointers,
            "memory_dtype": str(self.memory_dtype).removeprefix("torch."),
            "pointer_dtype": str(self.pointer_dtype).removeprefix("torch."),
            "capacity": self.capacity,
            "last_frame": self._last_frame,
            "rows": torch.from_numpy(live.copy()),
            "spatial": self._spatial[idx].cpu(),
            "pointers": self._pointers[idx].cpu(),
            "spatial_frame": torch.from_numpy(self._spatial_frame[live].copy()),
            "pointer_frame": torch.from_numpy(self._pointer_frame[live].copy()),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None) -> ObjectMemory:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported ObjectMemory state format {state.get('format')!r}")
        rows = state["rows"].numpy().astype(np.int64)
        mem = cls(
            mem_dim=state["mem_dim"],
            hidden_dim=state["hidden_dim"],
            feat_size=tuple(state["feat_size"]),
            num_maskmem=state["num_maskmem"],
            max_cond_frames=state["max_cond_frames"],
            max_object_pointers=state["max_object_pointers"],
            capacity=max(state["capacity"], int(rows.max(initial=-1)) + 1),
            device=device,
            memory_dtype=getattr(torch, state["memory_dtype"]),
            pointer_dtype=getattr(torch, state["pointer_dtype"]),
        )
        idx = torch.from_numpy(rows).to(mem.device)
        mem._spatial[idx] = state["spatial"].to(mem.device, mem.memory_dtype)
        mem._pointers[idx] = state["pointers"].to(mem.device, mem.pointer_dtype)
        mem._spatial_frame[rows] = state["spatial_frame"].numpy()
        mem._pointer_frame[rows] = state["pointer_frame"].numpy()
        mem._live[rows] = True
        mem._free = sorted(set(range(mem.capacity)) - set(rows.tolist()))
        mem._last_frame = int(state["last_frame"])
        return mem


def gather_banks(entries: Sequence[tuple[ObjectMemory, Rows, int]]) -> MemoryBank:
    """One padded ``MemoryBank`` for the objects of several streams, in the order given.

    entries: ``(memory, rows, frame_idx)`` per stream, ``frame_idx`` being the frame that
    stream is tracking now. All memories must share geometry, dtypes and device. Slots that no
    object of the batch uses are dropped; the rest are masked per object (``*_valid``; None
    when nothing is masked; ``*_valid_host``: the same tables as numpy arrays, so the tracker
    groups objects by layout without a device read). Each stream's memories are copied once,
    straight into the batch; all indices, offsets and masks reach the device in one transfer.
    """
    if not entries:
        raise ValueError("no memories to gather")
    first = entries[0][0]
    if any(m._geometry() != first._geometry() for m, _, _ in entries):
        raise ValueError("memories of one batch must share geometry, dtypes and device")
    picked = [(m, _as_rows(r), int(t)) for m, r, t in entries]
    sel = [m._selection(r, t) for m, r, t in picked]
    s_valid, s_off, p_valid, p_off = (np.concatenate([s[i] for s in sel]) for i in range(4))
    s_cols, p_cols = np.flatnonzero(s_valid.any(axis=0)), np.flatnonzero(p_valid.any(axis=0))
    s_valid, s_off, p_valid, p_off = s_valid[:, s_cols], s_off[:, s_cols], p_valid[:, p_cols], p_off[:, p_cols]
    # flat (row * slots + slot) source index of every gathered entry, per stream
    s_idx = [(r[:, None] * first.spatial_slots + s_cols).reshape(-1) for _, r, _ in picked]
    p_idx = [(r[:, None] * first.pointer_slots + p_cols).reshape(-1) for _, r, _ in picked]
    parts = [*s_idx, *p_idx, s_off.reshape(-1), s_valid.reshape(-1), p_off.reshape(-1), p_valid.reshape(-1)]
    pieces = _to_device(np.concatenate(parts).astype(np.int64), first.device).split([a.size for a in parts])
    k = len(picked)
    s_off_t, s_valid_t, p_off_t, p_valid_t = pieces[2 * k :]

    def gather(kind: str, cols: np.ndarray, indices: Sequence[Tensor]) -> Tensor | None:
        if cols.size == 0:
            return None
        template = getattr(first, kind)
        out = template.new_empty(s_valid.shape[0], cols.size, *template.shape[2:])
        flat_out, start = out.flatten(0, 1), 0
        for (m, _, _), idx in zip(picked, indices, strict=True):
            torch.index_select(getattr(m, kind).flatten(0, 1), 0, idx, out=flat_out[start : start + idx.numel()])
            start += idx.numel()
        return out

    spatial = gather("_spatial", s_cols, pieces[:k])
    pointers = gather("_pointers", p_cols, pieces[k : 2 * k])
    n = s_valid.shape[0]
    return MemoryBank(
        spatial=None if spatial is None else spatial.permute(0, 1, 4, 2, 3),
        spatial_offsets=None if spatial is None else s_off_t.view(n, -1),
        spatial_valid=None if spatial is None or s_valid.all() else s_valid_t.view(n, -1).bool(),
        pointers=pointers,
        pointer_offsets=None if pointers is None else p_off_t.view(n, -1),
        pointer_valid=None if pointers is None or p_valid.all() else p_valid_t.view(n, -1).bool(),
        # the layout on the host too: the tracker groups objects by it without reading the device
        spatial_valid_host=None if spatial is None else s_valid,
        pointer_valid_host=None if pointers is None else p_valid,
    )
