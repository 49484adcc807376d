"""Small helpers of the tracker modules: channels-first LayerNorm, mask resizing.

The SAM2-style MLP (``proj_in`` / ``layers.*`` / ``proj_out``) and activations come from
``sam3_runtime.modeling.layers`` and are re-exported here for the tracker modules.
"""

from __future__ import annotations

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
]

# Mask logit written for objects the decoder considers absent (as in SAM 2 / SAM 3).
NO_OBJECT_SCORE = -1024.0


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``[B, C, H, W]`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[N, 1, H, W]`` masks with antialiasing, done in fp32.

    The result keeps the input dtype; a boolean input comes back as "any coverage" (non-zero
    after resizing), which is what the reference gets by casting the resized floats to bool.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    out = F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out != 0 if masks.dtype == torch.bool else out.to(masks.dtype)
