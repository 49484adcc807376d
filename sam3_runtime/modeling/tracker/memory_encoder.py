"""Memory encoder: fuse a frame's features with an object's mask into a 64-channel memory map.

The mask (``[N, 1, 16h, 16w]``, already mapped to the memory-encoder input scale) is brought
down to ``h x w`` by strided convs, added to projected frame features, refined by two
ConvNeXt-style blocks and projected to ``memory_encoder_output_channels``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sam3_runtime.config import TrackerConfig
from sam3_runtime.modeling.position import SinePositionEncoding

from .common import LayerNorm2d, activation_fn


class MaskDownSamplerLayer(nn.Module):
    def __init__(self, cfg: TrackerConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=cfg.mask_downsampler_kernel_size,
            stride=cfg.mask_downsampler_stride,
            padding=cfg.mask_downsampler_padding,
        )
        self.layer_norm = LayerNorm2d(out_channels, eps=1e-6)
        self.act = activation_fn(cfg.mask_downsampler_hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.layer_norm(self.conv(x)))


class MaskDownSampler(nn.Module):
    """Strided convs down to ``1 / total_stride`` resolution; channels grow by ``stride**2`` each step."""

    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        num_layers = int(math.log2(cfg.mask_downsampler_total_stride) // math.log2(cfg.mask_downsampler_stride))
        channels = [cfg.mask_downsampler_stride ** (2 * i) for i in range(num_layers + 1)]
        self.layers = nn.ModuleList(
            MaskDownSamplerLayer(cfg, cin, cout) for cin, cout in zip(channels[:-1], channels[1:], strict=True)
        )
        self.final_conv = nn.Conv2d(channels[-1], cfg.mask_downsampler_embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.final_conv(x)


class MemoryFuserBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm, pointwise MLP, layer scale, residual."""

    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        dim = cfg.memory_fuser_embed_dim
        self.depthwise_conv = nn.Conv2d(
            dim, dim, kernel_size=cfg.memory_fuser_kernel_size, padding=cfg.memory_fuser_padding, groups=dim
        )
        self.layer_norm = LayerNorm2d(dim, eps=1e-6)
        self.pointwise_conv1 = nn.Linear(dim, cfg.memory_fuser_intermediate_dim)
        self.pointwise_conv2 = nn.Linear(cfg.memory_fuser_intermediate_dim, dim)
        self.act = activation_fn(cfg.memory_fuser_hidden_act)
        self.scale = nn.Parameter(cfg.memory_fuser_layer_scale_init_value * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer_norm(self.depthwise_conv(x)).permute(0, 2, 3, 1)
        y = self.pointwise_conv2(self.act(self.pointwise_conv1(y)))
        return x + (self.scale * y).permute(0, 3, 1, 2)


class MemoryFuser(nn.Module):
    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryFuserBlock(cfg) for _ in range(cfg.memory_fuser_num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        hidden = cfg.memory_encoder_hidden_size
        self.out_channels = cfg.memory_encoder_output_channels
        self.mask_downsampler = MaskDownSampler(cfg)
        self.feature_projection = nn.Conv2d(hidden, hidden, kernel_size=1)
        self.memory_fuser = MemoryFuser(cfg)
        self.projection = nn.Conv2d(hidden, self.out_channels, kernel_size=1)
        # no weights; also encodes the memory positions when frames are conditioned on memories
        self.position_encoding = SinePositionEncoding(self.out_channels // 2)

    def forward(self, features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """``features [1 or N, C, h, w]`` (raw frame features), ``masks [N, 1, 16h, 16w]`` (already
        scaled, e.g. ``20 * sigmoid(logits) - 10``) -> ``(memory [N, Cm, h, w], pos [N, Cm, h, w])``.

        A batch-1 ``features`` is projected once and broadcast over the objects. ``pos`` is the
        same sine encoding for every object (an expanded view).
        """
        x = self.feature_projection(features) + self.mask_downsampler(masks)
        x = self.projection(self.memory_fuser(x))
        pos = self.position_encoding(x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype, batch_size=x.shape[0])
        return x, pos
