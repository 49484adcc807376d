"""Memory attention: condition the current frame's features on an object's memory bank.

Every layer: RoPE self-attention over the ``h x w`` frame tokens, RoPE cross-attention from
those tokens to the memory tokens, then an MLP (pre-norm, residual).

Memory layout (batch-first, objects are the batch dimension)::

    memory [N, M, Cm] = [ S spatial memories x (h*w) tokens | P object-pointer tokens ]

The first ``M - P`` keys are spatial memories on the same ``h x w`` grid as the queries, so
they get the same 2-D RoPE, repeated per memory frame; the last ``P`` (object pointers) get
none.

No attention mask ever reaches ``scaled_dot_product_attention`` (a mask makes it leave the
flash kernel on a GPU). Objects whose memories are padded are grouped by layout instead: the
objects of one group keep the same number of spatial frames and pointer tokens, their valid
entries are packed to the front and the group runs unmasked (attention is invariant to the
order of the keys, and a spatial key's RoPE depends only on its place in its own grid). The
layouts are read on the host; ``TrackerModel.condition_on_memory`` gets them from
``gather_banks`` without any device read.

Before the first cross-attention every object of one frame has the same tokens, so layer 0's
self-attention runs once per frame (``begin``) and the rest once per object (``finish``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_runtime.config import TrackerConfig
from sam3_runtime.host_reads import to_host

from .common import activation_fn

# The cross-attention key/value input width is fixed at 64 in the SAM 2 / SAM 3 architecture
# (and in the transformers port), independent of memory_encoder_output_channels.
MEMORY_KV_DIM = 64


def axial_rope(
    height: int, width: int, head_dim: int, theta: float, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """cos / sin tables ``[height*width, head_dim]`` (fp32) for 2-D axial RoPE on a row-major grid.

    The first half of each head is rotated by the x (column) position, the second half by y;
    rotation pairs are adjacent channels (2i, 2i+1).
    """
    quarter = torch.arange(0, head_dim // 2, 2, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (theta ** (quarter / (head_dim // 2)))  # [head_dim / 4]
    idx = torch.arange(height * width, device=device)
    x = (idx % width).float()
    y = torch.div(idx, width, rounding_mode="floor").float()
    freqs = torch.cat((x[:, None] * inv_freq, y[:, None] * inv_freq), dim=-1)  # [L, head_dim / 2]
    freqs = freqs.repeat_interleave(2, dim=-1)
    return freqs.cos(), freqs.sin()


@dataclass(frozen=True)
class RopeTables:
    """RoPE of one ``h x w`` grid in the compute dtype, laid out for ``[..., L, heads, head_dim]`` tokens.

    cos: ``[L, 1, head_dim]``; sin: ``[L, 1, head_dim / 2]``, one value per rotation pair (both
    channels of a pair share their angle). The angles are computed in fp32 and rounded once.
    """

    cos: Tensor
    sin: Tensor

    @property
    def grid(self) -> int:
        return self.cos.shape[0]


def rotate_(out: Tensor, x: Tensor, rope: RopeTables) -> Tensor:
    """``out = RoPE(x)`` for ``x [..., L, heads, head_dim]``, in x's dtype, three passes, no temporaries.

    A pair (a, b) becomes (a cos - b sin, b cos + a sin).
    """
    torch.mul(x, rope.cos, out=out)
    out[..., 0::2].addcmul_(x[..., 1::2], rope.sin, value=-1)
    out[..., 1::2].addcmul_(x[..., 0::2], rope.sin)
    return out


class RoPEAttention(nn.Module):
    def __init__(self, cfg: TrackerConfig, kv_in_dim: int | None = None) -> None:
        super().__init__()
        hidden = cfg.memory_attention_hidden_size
        inner = hidden // cfg.memory_attention_downsample_rate
        kv_in_dim = hidden if kv_in_dim is None else kv_in_dim
        self.num_heads = cfg.memory_attention_num_attention_heads
        self.head_dim = inner // self.num_heads
        self.q_proj = nn.Linear(hidden, inner)
        self.k_proj = nn.Linear(kv_in_dim, inner)
        self.v_proj = nn.Linear(kv_in_dim, inner)
        self.o_proj = nn.Linear(inner, hidden)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, rope: RopeTables, num_k_exclude_rope: int = 0
    ) -> Tensor:
        """``query [N, Lq, C]``, ``key`` / ``value [N, Lk, Ckv]``; ``rope`` of the ``Lq``-token grid.

        The first ``Lk - num_k_exclude_rope`` keys must be a whole number of ``Lq``-token grids.
        """
        # RoPE is applied on [N, L, heads, head_dim] before the heads move forward, so it reads
        # and writes contiguous memory
        q = self.q_proj(query).unflatten(-1, (self.num_heads, -1))
        q = rotate_(torch.empty_like(q), q, rope)
        k = self.k_proj(key).unflatten(-1, (self.num_heads, -1))
        n_rope = k.shape[1] - num_k_exclude_rope
        if n_rope > 0:
            if n_rope % rope.grid:
                raise ValueError(f"{n_rope} RoPE keys are not a whole number of {rope.grid}-token memory frames")
            rotated = torch.empty_like(k)
            frames = (-1, rope.grid)
            rotate_(rotated[:, :n_rope].unflatten(1, frames), k[:, :n_rope].unflatten(1, frames), rope)
            if num_k_exclude_rope:
                rotated[:, n_rope:] = k[:, n_rope:]
            k = rotated
        v = self.v_proj(value).unflatten(-1, (self.num_heads, -1))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).flatten(2))


class MemoryAttentionLayer(nn.Module):
    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        hidden = cfg.memory_attention_hidden_size
        self.self_attn = RoPEAttention(cfg)
        self.cross_attn_image = RoPEAttention(cfg, kv_in_dim=MEMORY_KV_DIM)
        self.linear1 = nn.Linear(hidden, cfg.memory_attention_feed_forward_hidden_size)
        self.linear2 = nn.Linear(cfg.memory_attention_feed_forward_hidden_size, hidden)
        self.layer_norm1 = nn.LayerNorm(hidden)
        self.layer_norm2 = nn.LayerNorm(hidden)
        self.layer_norm3 = nn.LayerNorm(hidden)
        self.act = activation_fn(cfg.memory_attention_feed_forward_hidden_act)

    def self_block(self, x: Tensor, rope: RopeTables) -> Tensor:
        q = self.layer_norm1(x)
        return x + self.self_attn(q, q, q, rope)

    def cross_block(self, x: Tensor, key: Tensor, value: Tensor, rope: RopeTables, num_ptr_tokens: int) -> Tensor:
        """``key`` = memory + its position encoding, ``value`` = memory (both ``[N, M, Cm]``)."""
        q = self.layer_norm2(x)
        x = x + self.cross_attn_image(q, key, value, rope, num_ptr_tokens)
        return x + self.linear2(self.act(self.linear1(self.layer_norm3(x))))

    def forward(self, x: Tensor, key: Tensor, value: Tensor, rope: RopeTables, num_ptr_tokens: int) -> Tensor:
        return self.cross_block(self.self_block(x, rope), key, value, rope, num_ptr_tokens)


@dataclass
class LayoutGroup:
    """Objects with the same number of valid spatial memories and pointer entries.

    rows: ``[n]`` object indices; spatial / pointers: ``[n, s]`` / ``[n, p]`` each object's
    valid entries in their original order (slot or token indices of the padded layout).
    """

    rows: np.ndarray
    spatial: np.ndarray
    pointers: np.ndarray

    def flat(self, kind: str, width: int) -> np.ndarray:
        """Flat ``row * width + entry`` indices into a ``[N * width, ...]`` view, objects in order."""
        return (self.rows[:, None] * width + getattr(self, kind)).reshape(-1)


def group_by_layout(spatial_valid: np.ndarray, pointer_valid: np.ndarray) -> list[LayoutGroup]:
    """Host-side grouping of ``[N, S]`` / ``[N, P]`` validity tables (True = real entry)."""
    counts = np.stack((spatial_valid.sum(1), pointer_valid.sum(1)), axis=1)
    keys, which = np.unique(counts, axis=0, return_inverse=True)
    groups = []
    for g, (s, p) in enumerate(keys.tolist()):
        rows = np.flatnonzero(which.reshape(-1) == g)
        groups.append(
            LayoutGroup(
                rows=rows,
                spatial=np.nonzero(spatial_valid[rows])[1].reshape(rows.size, s),
                pointers=np.nonzero(pointer_valid[rows])[1].reshape(rows.size, p),
            )
        )
    return groups


def layout_indices(groups: Sequence[LayoutGroup], spatial_width: int, pointer_width: int) -> list[np.ndarray]:
    """Per group: its rows, flat spatial entry indices, flat pointer entry indices (for ``indices_to_device``)."""
    return [a for g in groups for a in (g.rows, g.flat("spatial", spatial_width), g.flat("pointers", pointer_width))]


def host_validity(n: int, *tables: tuple[Tensor | None, Tensor | None, np.ndarray | None]) -> list[np.ndarray]:
    """``[n, entries]`` validity on the host of each ``(entries [N, E, ...], valid [N, E], valid_host)``.

    The host copy wins (no device read); otherwise the device masks are read in one counted read;
    no mask means all valid; no entries gives ``[n, 0]``. Rows past the tables (object-count
    bucketing pads the objects by repeating the last one) repeat the last row.
    """
    missing = [dev for mem, dev, host in tables if mem is not None and host is None and dev is not None]
    read = iter(to_host(*missing) if missing else [])
    out = []
    for mem, dev, host in tables:
        if mem is None:
            valid = np.zeros((n, 0), dtype=bool)
        elif host is not None:
            valid = np.asarray(host, dtype=bool)
        else:
            valid = next(read).astype(bool) if dev is not None else np.ones(mem.shape[:2], dtype=bool)
        if valid.shape[0] < n:
            valid = np.concatenate((valid, np.repeat(valid[-1:], n - valid.shape[0], axis=0)))
        out.append(valid)
    return out


def indices_to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """Host index arrays on the device in one transfer (pinned and asynchronous on CUDA: no host wait)."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays]))
    flat = flat.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else flat.to(device)
    return list(flat.split([np.asarray(a).size for a in arrays]))


class MemoryAttention(nn.Module):
    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(cfg) for _ in range(cfg.memory_attention_num_layers))
        self.layer_norm = nn.LayerNorm(cfg.memory_attention_hidden_size)
        self.head_dim = self.layers[0].self_attn.head_dim if self.layers else 0
        self.rope_theta = cfg.memory_attention_rope_theta
        # config order is (width, height) in the reference; only its product matters for square maps
        w, h = cfg.memory_attention_rope_feat_sizes
        self.default_feat_size = (h, w)
        # RoPE tables per (h, w, device, dtype): derived constants, deliberately not in the state dict
        self._rope_cache: dict[tuple, RopeTables] = {}

    def rope(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> RopeTables:
        key = (h, w, device, dtype)
        tables = self._rope_cache.get(key)
        if tables is None:
            with torch.inference_mode(False):  # usable outside inference mode too
                cos, sin = axial_rope(h, w, self.head_dim, self.rope_theta, device=device)
                tables = RopeTables(cos[:, None].to(dtype), sin[:, None, 0::2].to(dtype).contiguous())
            self._rope_cache[key] = tables
        return tables

    def begin(
        self, features: Tensor, feature_pos: Tensor | None, feat_size: tuple[int, int] | None
    ) -> tuple[Tensor, RopeTables]:
        """Frame tokens ``[F, L, C]`` (+ 0.1 x position) through layer 0's self-attention, once per frame."""
        h, w = feat_size if feat_size is not None else self.default_feat_size
        if h * w != features.shape[1]:
            raise ValueError(f"feature map of {features.shape[1]} tokens does not match feat_size {(h, w)}")
        x = features if feature_pos is None else features + 0.1 * feature_pos
        rope = self.rope(h, w, x.device, x.dtype)
        return (self.layers[0].self_block(x, rope) if self.layers else x), rope

    def finish(self, x: Tensor, key: Tensor, value: Tensor, rope: RopeTables, num_ptr_tokens: int) -> Tensor:
        """The rest after ``begin``: ``x [N, L, C]``, ``key`` = memory + position, ``value`` = memory ``[N, M, Cm]``."""
        for i, layer in enumerate(self.layers):
            if i:
                x = layer.self_block(x, rope)
            x = layer.cross_block(x, key, value, rope, num_ptr_tokens)
        return self.layer_norm(x)

    def forward(
        self,
        features: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        feature_pos: Tensor | None = None,
        num_object_pointer_tokens: int = 0,
        memory_mask: Tensor | None = None,
        feat_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Condition frame tokens on memory tokens.

        features: ``[N, L, C]`` current-frame tokens (row-major ``h x w``, L = h*w; a batch-1
        tensor, or one expanded over the objects, is computed once). feature_pos: ``[N or 1, L, C]``
        their sine position encoding (added with weight 0.1). memory / memory_pos: ``[N, M, Cm]``
        with the layout described in the module docstring (``Cm`` = 64); memory_pos already
        contains the temporal encodings. num_object_pointer_tokens: ``P``, the trailing tokens
        without RoPE. memory_mask: ``[N, M]`` bool, True = valid (None = all valid); it must keep
        or drop whole spatial frames and leave every object a key. It is read on the host (one
        counted device read): batched callers should group by layout themselves, as
        ``TrackerModel.condition_on_memory`` does. feat_size: ``(h, w)``, defaults to the
        config's RoPE feature size. Returns ``[N, L, C]``.
        """
        shared = all(t is None or t.shape[0] == 1 or t.stride(0) == 0 for t in (features, feature_pos))
        frames = features[:1] if shared else features
        x, rope = self.begin(frames, None if feature_pos is None else feature_pos[: frames.shape[0]], feat_size)
        n = memory.shape[0]
        key = memory.to(x.dtype) + memory_pos.to(x.dtype)  # banks may be kept in bf16 while the model runs in fp32
        value = memory.to(x.dtype)
        if memory_mask is None:
            return self.finish(x.expand(n, -1, -1), key, value, rope, num_object_pointer_tokens)
        (valid,) = to_host(memory_mask)
        n_rope = memory.shape[1] - num_object_pointer_tokens
        frame_valid = valid[:, :n_rope].reshape(n, -1, rope.grid)
        if (frame_valid.any(-1) != frame_valid.all(-1)).any() or not valid.any(1).all():
            raise ValueError("memory_mask must keep or drop whole spatial memory frames and leave every object a key")
        groups = group_by_layout(frame_valid.all(-1), valid[:, n_rope:])
        dev = iter(indices_to_device(layout_indices(groups, frame_valid.shape[1], num_object_pointer_tokens), x.device))
        out = x.new_empty(n, *x.shape[1:])
        cm = memory.shape[-1]
        for g in groups:
            rows, s_idx, p_idx = next(dev), next(dev), next(dev)
            packed = []
            for t in (key, value):  # the group's valid frames and pointer tokens, packed to the front
                frames = t[:, :n_rope].reshape(-1, rope.grid, cm).index_select(0, s_idx)
                tokens = t[:, n_rope:].reshape(-1, cm).index_select(0, p_idx)
                k = rows.numel()
                packed.append(torch.cat((frames.reshape(k, -1, cm), tokens.reshape(k, -1, cm)), 1))
            xg = x.expand(n, -1, -1).index_select(0, rows)
            out.index_copy_(0, rows, self.finish(xg, *packed, rope, g.pointers.shape[1]))
        return out
