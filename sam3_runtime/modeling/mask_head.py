"""SAM 3 detector mask head: instance mask logits for the DETR queries.

The fused image tokens from the DETR encoder first read the prompt (text + exemplar tokens)
once more through a pre-norm cross-attention. A small FPN-style pixel decoder then walks
them up the detector's higher-resolution FPN levels (nearest upsample, add the skip, 3x3
conv, GroupNorm, ReLU), giving per-pixel embeddings at the finest level (288 x 288 for a
1008 px input). Each query's mask logit map is the dot product of an MLP embedding of the
query with a 1x1 projection of those pixel embeddings.

Parameter names follow transformers' ``Sam3MaskDecoder`` (checkpoint prefix
``detector_model.mask_decoder.``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam3_runtime.config import MaskDecoderConfig
from sam3_runtime.modeling.layers import Attention, key_padding_mask

# transformers' pixel decoder normalises with 8 groups regardless of width
_GROUP_NORM_GROUPS = 8


@dataclass
class MaskHeadOutput:
    mask_logits: torch.Tensor
    """[N, Q, H, W] instance mask logits at the finest FPN level's resolution."""
    semantic_logits: torch.Tensor | None = None
    """[N, 1, H, W] semantic (union) mask logits; only when requested."""


def _rows(features: torch.Tensor, image_index: torch.Tensor | None) -> torch.Tensor:
    """Per-image features -> per-row features (a gather only when an index is given)."""
    return features if image_index is None else features.index_select(0, image_index)


class PixelDecoder(nn.Module):
    """Coarse-to-fine FPN walk from the encoder token grid to the finest FPN level."""

    def __init__(self, cfg: MaskDecoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        # one conv/norm per upsampling stage; SAM 3 has 3 but only uses as many as it has skip levels (2)
        self.conv_layers = nn.ModuleList(
            nn.Conv2d(d, d, kernel_size=3, padding=1) for _ in range(cfg.num_upsampling_stages)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(_GROUP_NORM_GROUPS, d) for _ in range(cfg.num_upsampling_stages))

    def forward(
        self, coarse: torch.Tensor, skips: Sequence[torch.Tensor], image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """coarse [N, d, h, w]; skips fine -> coarse, each [B, d, H_i, W_i] -> [N, d, H_0, W_0]."""
        if len(skips) > len(self.conv_layers):
            raise ValueError(f"{len(skips)} skip levels but only {len(self.conv_layers)} upsampling stages")
        x = coarse
        for conv, norm, skip in zip(self.conv_layers, self.norms, reversed(skips), strict=False):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = x + _rows(skip, image_index)
            x = F.relu(norm(conv(x)))
        return x


class MaskEmbedder(nn.Module):
    """3-layer ReLU MLP from query states to mask embeddings (weights ``layers.0..2``)."""

    def __init__(self, cfg: MaskDecoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class MaskHead(nn.Module):
    """Query states + fused image tokens + FPN skips -> instance mask logits."""

    def __init__(self, cfg: MaskDecoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.pixel_decoder = PixelDecoder(cfg)
        self.mask_embedder = MaskEmbedder(cfg)
        self.instance_projection = nn.Conv2d(d, d, kernel_size=1)
        self.semantic_projection = nn.Conv2d(d, 1, kernel_size=1)
        self.prompt_cross_attn = Attention(d, cfg.num_attention_heads)
        # nn.LayerNorm's default eps (1e-5), as transformers builds it; cfg.layer_norm_eps is not used here
        self.prompt_cross_attn_norm = nn.LayerNorm(d)

    def forward(
        self,
        queries: torch.Tensor,
        encoder_tokens: torch.Tensor,
        high_res_features: Sequence[torch.Tensor],
        token_size: tuple[int, int],
        prompt: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        return_semantic: bool = False,
    ) -> MaskHeadOutput:
        """Mask logits for N (image, prompt) rows.

        Args:
            queries: [N, Q, d] final DETR decoder states. Queries are independent, so any subset
                (e.g. only those above the score threshold) gives the same logits for those queries.
            encoder_tokens: [N, L, d] DETR encoder output; the first h*w tokens are the image grid.
            high_res_features: detector FPN levels finer than the token grid, fine -> coarse
                (SAM 3: the 288x288 and 144x144 maps), each [B, d, H_i, W_i]. Without
                ``image_index`` B must equal N or broadcast to it (e.g. ``x.expand(N, ...)``, no copy).
            token_size: (h, w) of the encoder token grid (72 x 72 for a 1008 px input).
            prompt: [N, P, d] prompt tokens (text, then exemplar tokens) or None to skip the
                prompt cross-attention.
            prompt_mask: [N, P] bool, True = valid prompt token (None = all valid).
            image_index: [N] long, the image of each row in the FPN batch.
            return_semantic: also compute the semantic-segmentation logits (unused by the video
                pipeline, so off by default).
        """
        h, w = token_size
        tokens = encoder_tokens[:, : h * w]
        if prompt is not None:
            normed = self.prompt_cross_attn_norm(tokens)
            tokens = tokens + self.prompt_cross_attn(normed, prompt, prompt, key_padding_mask(prompt_mask))
        grid = tokens.transpose(1, 2).unflatten(2, (h, w))

        pixels = self.pixel_decoder(grid, high_res_features, image_index)
        instance = self.instance_projection(pixels)
        mask_embed = self.mask_embedder(queries)
        mask_logits = torch.bmm(mask_embed, instance.flatten(2)).unflatten(2, instance.shape[-2:])
        semantic = self.semantic_projection(pixels) if return_semantic else None
        return MaskHeadOutput(mask_logits=mask_logits, semantic_logits=semantic)
