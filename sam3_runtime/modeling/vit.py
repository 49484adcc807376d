"""SAM 3's image backbone: a plain ViT with 2-D RoPE and windowed/global attention blocks.

Parameter names follow the transformers checkpoint (``detector_model.vision_encoder.backbone.*``).
Nothing position-related is stored: the RoPE tables and the tiled absolute position
embedding are rebuilt from the token grid on each forward (a few tiny kernels), so the
module works at any input size that is a multiple of the patch size, and modules built on
the meta device load a checkpoint without any buffer left uninitialised.

Token layout. LayerNorm, the MLP and the q/k/v/o projections act on each token alone;
only attention cares which tokens sit together. When the window tiles the token grid
exactly (the real model: 72x72 tokens, window 24) the residual stream is kept in window
order for the whole network: windowed blocks then see their windows as a free view, and
global blocks attend over all tokens with RoPE positions permuted the same way (attention
does not care about token order). The only reorders are one after the patch embedding and
one at the end. Otherwise (the tiny preset: 8x8 tokens, window 3) each windowed block pads
and partitions its input the way the reference does; the zero padding tokens take part in
the attention as keys and values (their projections are the biases), so they matter for
exactness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_runtime.config import ViTConfig
from sam3_runtime.modeling.layers import Attention, FeedForward

# -- windows ------------------------------------------------------------------------------


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C]`` -> ``[B * nH * nW, window * window, C]``, zero-padding the bottom/right edges."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // window, (w + pad_w) // window
    x = x.reshape(b, nh, window, nw, window, c).transpose(2, 3)
    return x.reshape(b * nh * nw, window * window, c)


def window_unpartition(x: Tensor, window: int, batch: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nH * nW, window**2, C]`` -> ``[B, H, W, C]`` (padding dropped)."""
    nh, nw = -(-height // window), -(-width // window)
    x = x.reshape(batch, nh, nw, window, window, x.shape[-1]).transpose(2, 3)
    x = x.reshape(batch, nh * window, nw * window, -1)
    return x[:, :height, :width]


@dataclass(frozen=True)
class TokenGrid:
    """Shape of the residual stream ``[batch, height * width, C]`` and the order of its tokens."""

    batch: int
    height: int
    width: int
    window: int
    window_ordered: bool  # tokens stored window by window (only when the window tiles the grid)

    def to_windows(self, x: Tensor) -> Tensor:
        """Stream ``[B, N, C]`` -> ``[B * num_windows, window**2, C]``."""
        if self.window_ordered:
            return x.view(-1, self.window * self.window, x.shape[-1])
        return window_partition(x.view(self.batch, self.height, self.width, -1), self.window)

    def from_windows(self, x: Tensor) -> Tensor:
        """``[B * num_windows, window**2, C]`` -> stream ``[B, N, C]``."""
        if self.window_ordered:
            return x.view(self.batch, self.height * self.width, -1)
        x = window_unpartition(x, self.window, self.batch, self.height, self.width)
        return x.reshape(self.batch, self.height * self.width, -1)

    def to_stream(self, x: Tensor) -> Tensor:
        """Raster ``[B, H, W, C]`` -> stream order ``[B, N, C]``."""
        if self.window_ordered:
            return window_partition(x, self.window).reshape(x.shape[0], self.height * self.width, -1)
        return x.reshape(x.shape[0], self.height * self.width, -1)

    def to_raster(self, x: Tensor) -> Tensor:
        """Stream order ``[B, N, C]`` -> raster ``[B, H, W, C]``."""
        if self.window_ordered:
            windows = x.view(-1, self.window * self.window, x.shape[-1])
            return window_unpartition(windows, self.window, self.batch, self.height, self.width)
        return x.view(self.batch, self.height, self.width, -1)


# -- rotary position encoding -----------------------------------------------------------


def rope_tables(coords: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Axial 2-D RoPE for token positions ``coords [N, 2]`` (x, y; fp32).

    The first half of each head's channels rotates with x, the second half with y, in
    adjacent pairs ``(2i, 2i+1)``. Returns fp32 ``(cos, sin)`` of shape ``[N, 1, 1, head_dim]``
    (broadcast over the q/k and head axes of :func:`apply_rope`); ``sin`` carries the
    pair's sign (``-sin`` on even channels) so that applying it is a single multiply-add.
    """
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32, device=coords.device) / half)
    angles = (coords[:, :, None] * inv_freq).flatten(1).repeat_interleave(2, dim=-1)  # [N, head_dim]
    # [-1, 1, -1, 1, ...] built on the device (no host tensor: keeps CUDA-graph capture possible)
    sign = (torch.arange(head_dim, device=coords.device) % 2) * 2.0 - 1.0
    return angles.cos()[:, None, None], (angles.sin() * sign)[:, None, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of ``x [..., head_dim]`` in fp32 (angles are too fine for bf16); same dtype out."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (a, b) -> (b, a)
    return torch.addcmul(x * cos, swapped, sin).to(x.dtype)  # x * cos promotes to fp32


def grid_coords(height: int, width: int, scale: float, device: torch.device | str | None) -> Tensor:
    """``[height, width, 2]`` fp32 (x, y) token coordinates, multiplied by ``scale``."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1) * scale


# -- modules ------------------------------------------------------------------------------


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, kernel_size=p, stride=p, bias=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.projection(pixel_values.to(self.projection.weight.dtype))  # [B, C, H, W]


class ViTEmbeddings(nn.Module):
    """Patch embedding plus the absolute position embedding learnt at ``pretrain_image_size``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.pretrain_grid = cfg.pretrain_image_size // cfg.patch_size
        self.position_embeddings = nn.Parameter(torch.empty(1, self.pretrain_grid**2, cfg.hidden_size))
        nn.init.normal_(self.position_embeddings, std=0.02)

    def tiled_position_embeddings(self, height: int, width: int) -> Tensor:
        """``[1, height, width, C]``: the pretrain grid repeated (not interpolated) and cropped, as SAM 3 was trained."""
        p = self.pretrain_grid
        table = self.position_embeddings.view(1, p, p, -1)
        if (height, width) == (p, p):
            return table
        return table.repeat(1, -(-height // p), -(-width // p), 1)[:, :height, :width]


class RoPEAttention(Attention):
    """Multi-head self-attention with 2-D RoPE on queries and keys (``Attention``'s projections)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        if hidden_size % num_heads or (hidden_size // num_heads) % 4:
            raise ValueError(f"head dim {hidden_size}/{num_heads} must be an integer multiple of 4 for 2-D RoPE")
        super().__init__(hidden_size, num_heads)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """``x [B, N, C]``, ``rope`` from :func:`rope_tables` for those N positions -> ``[B, N, C]``."""
        b, n, c = x.shape
        # One GEMM for q, k and v: the checkpoint keeps three Linear layers, so the weights are
        # concatenated per call (a few MB, small next to reading the activations three times).
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        bias = torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias))
        qkv = F.linear(x, weight, bias).view(b, n, 3, self.num_heads, self.head_dim)
        q, k = apply_rope(qkv[:, :, :2], *rope).unbind(2)
        v = qkv[:, :, 2]
        # SDPA takes [B, heads, N, head_dim]; these transposes are views (no copies).
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm transformer block; ``window_size == 0`` means global attention."""

    def __init__(self, cfg: ViTConfig, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = RoPEAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = FeedForward(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], grid: TokenGrid) -> Tensor:
        """``x [B, N, C]`` in ``grid``'s token order; ``rope`` matches this block's attention groups."""
        h = self.layer_norm1(x)
        if self.window_size:
            h = grid.to_windows(h)
        h = self.attention(h, rope)
        if self.window_size:
            h = grid.from_windows(h)
        x = x + h
        return x + self.mlp(self.layer_norm2(x))


class ViTBackbone(nn.Module):
    """``pixel_values [B, 3, H, W]`` -> last feature map ``[B, hidden_size, H / patch, W / patch]``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = ViTEmbeddings(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        global_blocks = set(cfg.global_attn_indexes)
        self.layers = nn.ModuleList(
            ViTBlock(cfg, 0 if i in global_blocks else cfg.window_size) for i in range(cfg.num_hidden_layers)
        )

    def token_grid(self, batch: int, height: int, width: int) -> TokenGrid:
        ws = self.cfg.window_size
        ordered = ws > 0 and height % ws == 0 and width % ws == 0
        return TokenGrid(batch, height, width, ws, ordered)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """The map is a channels-last view of the token tensor: ``.permute(0, 2, 3, 1)`` or
        ``.flatten(2).transpose(1, 2)`` give ``[B, H, W, C]`` / ``[B, H*W, C]`` tokens without a copy,
        and convolutions on it run in channels-last layout."""
        cfg = self.cfg
        x = self.embeddings.patch_embeddings(pixel_values).permute(0, 2, 3, 1)  # [B, H, W, C] view
        b, h, w, _ = x.shape
        grid = self.token_grid(b, h, w)
        pos = self.embeddings.tiled_position_embeddings(h, w)
        x = self.layer_norm(grid.to_stream(x) + grid.to_stream(pos))

        device, head_dim, ws = x.device, cfg.hidden_size // cfg.num_attention_heads, cfg.window_size
        window_rope = global_rope = None
        if ws > 0:
            window_rope = rope_tables(grid_coords(ws, ws, 1.0, device).view(-1, 2), head_dim, cfg.rope_theta)
        if any(layer.window_size == 0 for layer in self.layers):
            # SAM 3 stretches global positions so the whole grid spans one window's range.
            coords = grid_coords(h, w, ws / w, device)
            global_rope = rope_tables(grid.to_stream(coords[None]).view(-1, 2), head_dim, cfg.rope_theta)

        for layer in self.layers:
            x = layer(x, window_rope if layer.window_size else global_rope, grid)
        return grid.to_raster(x).permute(0, 3, 1, 2)
