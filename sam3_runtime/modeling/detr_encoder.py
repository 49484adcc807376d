"""SAM 3 fusion encoder: image tokens attend to themselves, then to the prompt tokens.

The detector runs once per (image, prompt) pair while the backbone runs once per image.
The first layer's self-attention depends on the image alone, so it is computed per image
and only then gathered to the pairs; from the first cross-attention on, every pair's tokens
differ. With one prompt per image nothing is gathered at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam3_runtime.config import DETREncoderConfig
from sam3_runtime.modeling.layers import Attention, FeedForward, key_padding_mask

# The checkpoint's layer norms use PyTorch's default eps, not ``layer_norm_eps`` of the config.
LAYER_NORM_EPS = 1e-5


@dataclass
class DetrEncoderOutput:
    """Fused image tokens of every (image, prompt) pair.

    image_tokens: [N, H*W, d], one row per pair, row-major over (H, W).
    image_pos: [1 or N, H*W, d], the sine position encoding of those tokens (broadcasts
        against ``image_tokens``; batch 1 when the caller passed a shared encoding).
    spatial_shape: (H, W) of the token grid.
    """

    image_tokens: torch.Tensor
    image_pos: torch.Tensor
    spatial_shape: tuple[int, int]


class DetrEncoderLayer(nn.Module):
    """Pre-norm block: self-attention over image tokens, cross-attention to the prompt, MLP."""

    def __init__(self, cfg: DETREncoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.self_attn = Attention(d, cfg.num_attention_heads)
        self.cross_attn = Attention(d, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(d, cfg.intermediate_size, cfg.hidden_act)
        self.layer_norm3 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def self_attention(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [B, L, d], pos broadcastable to x; position goes into queries and keys only."""
        h = self.layer_norm1(x)
        qk = h + pos
        return x + self.self_attn(qk, qk, h)

    def fuse_prompt(self, x: torch.Tensor, prompt: torch.Tensor, prompt_attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention of image tokens [N, L, d] to prompt tokens [N, T, d], then the MLP."""
        h = self.layer_norm2(x)
        x = x + self.cross_attn(h, prompt, prompt, prompt_attn_mask)
        return x + self.mlp(self.layer_norm3(x))

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        prompt: torch.Tensor,
        prompt_attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.fuse_prompt(self.self_attention(x, pos), prompt, prompt_attn_mask)


class DetrEncoder(nn.Module):
    """Stack of ``DetrEncoderLayer``; parameter names match ``detector_model.detr_encoder``."""

    def __init__(self, cfg: DETREncoderConfig) -> None:
        super().__init__()
        if cfg.num_layers < 1:
            raise ValueError("the DETR encoder needs at least one layer")
        self.layers = nn.ModuleList(DetrEncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(
        self,
        image_features: torch.Tensor,
        image_pos: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> DetrEncoderOutput:
        """Fuse per-image features with per-pair prompts.

        image_features: [B, d, H, W], one FPN level per image (SAM 3 uses the stride-14
            level, i.e. the third of the four FPN outputs).
        image_pos: [1 or B, d, H, W] its sine position encoding (pass batch 1 when all
            images share it, which they do; then it is never copied).
        prompt: [N, T, d] prompt tokens of each pair (text, or text followed by geometry).
        prompt_mask: [N, T] bool, True for real tokens; None when nothing is padded.
        image_index: [N] long, the image of each pair; None means pair i is image i (N == B).
        """
        height, width = image_features.shape[-2:]
        x = image_features.flatten(2).transpose(1, 2)
        pos = image_pos.flatten(2).transpose(1, 2)
        attn_mask = key_padding_mask(prompt_mask)

        first, *rest = self.layers
        x = first.self_attention(x, pos)
        if image_index is not None:
            x = x.index_select(0, image_index)
            if pos.shape[0] > 1:
                pos = pos.index_select(0, image_index)
        x = first.fuse_prompt(x, prompt, attn_mask)
        for layer in rest:
            x = layer(x, pos, prompt, attn_mask)
        return DetrEncoderOutput(image_tokens=x, image_pos=pos, spatial_shape=(int(height), int(width)))
