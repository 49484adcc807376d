"""Memory attention: condition the current frame's features on an object's memory bank.

Every layer: RoPE self-attention over the ``h x w`` frame tokens, RoPE cross-attention from
those tokens to the memory tokens, then an MLP (pre-norm, residual).

Memory layout (batch-first, objects are the batch dimension)::

    memory [N, M, Cm] = [ S spatial memories x (h*w) tokens | P object-pointer tokens ]

The first ``M - P`` keys are spatial memories on the same ``h x w`` grid as the queries, so
they get the same 2-D RoPE, repeated per memory frame; the last ``P`` (object pointers) get
none. Objects with fewer memories are padded to a common ``S`` / ``P`` and the padding is
excluded with ``memory_mask [N, M]`` (True = attend). Every object must keep at least one
valid key (a fully masked row has no defined softmax); ``TrackerModel.condition_on_memory``
takes care of objects without memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_runtime.config import TrackerConfig

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


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of ``x [..., L, D]`` (computed in fp32, returned in x's dtype)."""
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (xf * cos + rotated * sin).to(x.dtype)


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

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [N, heads, L, head_dim]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        rope: tuple[Tensor, Tensor],
        num_k_exclude_rope: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``query [N, Lq, C]``, ``key`` / ``value [N, Lk, Ckv]``; ``rope`` cos/sin ``[Lq, head_dim]``.

        The first ``Lk - num_k_exclude_rope`` keys must be a whole number of ``Lq``-token grids.
        ``attn_mask``: boolean, broadcastable to ``[N, heads, Lq, Lk]``, True = attend.
        """
        cos, sin = rope
        q = apply_rope(self._heads(self.q_proj(query)), cos, sin)
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        n_rope = k.shape[2] - num_k_exclude_rope
        if n_rope > 0:
            grid = cos.shape[0]
            if n_rope % grid:
                raise ValueError(f"{n_rope} RoPE keys are not a whole number of {grid}-token memory frames")
            k_rope = apply_rope(k[:, :, :n_rope].unflatten(2, (-1, grid)), cos, sin).flatten(2, 3)
            k = torch.cat((k_rope, k[:, :, n_rope:]), dim=2) if num_k_exclude_rope else k_rope
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
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

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        rope: tuple[Tensor, Tensor],
        num_object_pointer_tokens: int,
        attn_mask: Tensor | None,
    ) -> Tensor:
        q = self.layer_norm1(x)
        x = x + self.self_attn(q, q, q, rope)
        q = self.layer_norm2(x)
        x = x + self.cross_attn_image(q, memory + memory_pos, memory, rope, num_object_pointer_tokens, attn_mask)
        return x + self.linear2(self.act(self.linear1(self.layer_norm3(x))))


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
        tensor expanded over the objects is fine). feature_pos: ``[N or 1, L, C]`` their sine
        position encoding (added with weight 0.1). memory / memory_pos: ``[N, M, Cm]`` with the
        layout described in the module docstring (``Cm`` = 64); memory_pos already contains the
        temporal encodings. num_object_pointer_tokens: ``P``, the trailing tokens without RoPE.
        memory_mask: ``[N, M]`` bool, True = valid (None = all valid). feat_size: ``(h, w)``,
        defaults to the config's RoPE feature size. Returns ``[N, L, C]``.
        """
        h, w = feat_size if feat_size is not None else self.default_feat_size
        if h * w != features.shape[1]:
            raise ValueError(f"feature map of {features.shape[1]} tokens does not match feat_size {(h, w)}")
        x = features if feature_pos is None else features + 0.1 * feature_pos
        x = x.expand(memory.shape[0], -1, -1)
        memory = memory.to(x.dtype)  # banks may be kept in bf16 while the model runs in fp32
        memory_pos = memory_pos.to(x.dtype)
        rope = axial_rope(h, w, self.head_dim, self.rope_theta, device=x.device)
        attn_mask = None if memory_mask is None else memory_mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, memory, memory_pos, rope, num_object_pointer_tokens, attn_mask)
        return self.layer_norm(x)
