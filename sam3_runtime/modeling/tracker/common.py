"""Small helpers of the tracker modules: channels-first LayerNorm, sine encodings, mask resizing.

The SAM2-style MLP (``proj_in`` / ``layers.*`` / ``proj_out``) and activations come from
``sam3_runtime.modeling.layers`` and are re-exported here for the tracker modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import MLP, activation_fn

__all__ = [
    "MLP",
    "NO_OBJECT_SCORE",
    "LayerNorm2d",
    "activation_fn",
    "resize_masks",
    "sine_encoding_1d",
    "sine_position_encoding_2d",
]

# Mask logit written for objects the decoder considers absent (as in SAM 2 / SAM 3).
NO_OBJECT_SCORE = -1024.0


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``[B, C, H, W]`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def sine_position_encoding_2d(
    channels: int,
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
) -> Tensor:
    """Normalised 2-D sine encoding (DETR style, scale 2*pi), ``[1, channels, H, W]``.

    Computed in fp32 and cast at the end: in bf16 the positions themselves would already be
    rounded. Channel layout: the first half encodes y, the second x; within each half
    sin/cos alternate for consecutive frequencies.
    """
    npf = channels // 2
    eps = 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * (2 * math.pi)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * (2 * math.pi)
    i = torch.arange(npf, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)

    def interleave(pos: Tensor) -> Tensor:  # [n, npf] -> sin of even dims, cos of odd dims, interleaved
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=-1).flatten(1)

    pos_y = interleave(y[:, None] / dim_t)  # [H, npf]
    pos_x = interleave(x[:, None] / dim_t)  # [W, npf]
    pos = torch.cat((pos_y[:, None, :].expand(height, width, npf), pos_x[None, :, :].expand(height, width, npf)), -1)
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype)


def sine_encoding_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """1-D sine encoding ``[..., dim]`` (first half sin, second half cos), computed in fp32."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)
    pe = positions.float().unsqueeze(-1) / dim_t
    return torch.cat((pe.sin(), pe.cos()), dim=-1)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[N, 1, H, W]`` masks with antialiasing, done in fp32.

    The result keeps the input dtype; a boolean input comes back as "any coverage" (non-zero
    after resizing), which is what the reference gets by casting the resized floats to bool.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    out = F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out != 0 if masks.dtype == torch.bool else out.to(masks.dtype)
