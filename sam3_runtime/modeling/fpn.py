"""The FPN neck that turns the ViT's single-scale map into SAM 3's feature pyramid, and the
whole vision encoder (backbone + detector neck).

SAM 3 has two identical necks on one backbone: the detector's
(``detector_model.vision_encoder.neck.*``) and the tracker's (``tracker_neck.*``), with
separate weights. Both are :class:`FPNNeck`. The levels are 4x, 2x, 1x and 0.5x the token
grid (288, 144, 72 and 36 at 1008 px); both consumers only read the first three, so
``num_levels`` lets a caller skip the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sam3_runtime.config import VisionConfig
from sam3_runtime.modeling.position import SinePositionEncoding
from sam3_runtime.modeling.vit import ViTBackbone


class FPNLevel(nn.Module):
    """Resample the backbone map by ``scale_factor`` (transposed convs up, max-pool down), then 1x1 and 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: float) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        # A Sequential keeps the checkpoint's indices: the GELU between the two upsampling
        # convs of the 4x level takes index 1, so its second conv is ``scale_layers.2``.
        if scale_factor == 4.0:
            layers = [
                nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2),
                nn.GELU(),
                nn.ConvTranspose2d(in_channels // 2, in_channels // 4, kernel_size=2, stride=2),
            ]
            mid = in_channels // 4
        elif scale_factor == 2.0:
            layers = [nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)]
            mid = in_channels // 2
        elif scale_factor == 1.0:
            layers, mid = [], in_channels
        elif scale_factor == 0.5:
            layers, mid = [nn.MaxPool2d(kernel_size=2, stride=2)], in_channels
        else:
            raise ValueError(f"FPN scale factor {scale_factor} is not one of 4, 2, 1, 0.5")
        self.scale_layers = nn.Sequential(*layers)
        self.proj1 = nn.Conv2d(mid, out_channels, kernel_size=1)
        self.proj2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.scale_layers(x.to(self.proj1.weight.dtype))
        return self.proj2(self.proj1(x))


@dataclass(frozen=True)
class FPNFeatures:
    """Per level, finest first: ``features[i] [B, fpn_hidden_size, H_i, W_i]`` and
    ``position_encodings[i]``, same shape and dtype (a batch-expanded view; read-only)."""

    features: list[Tensor]
    position_encodings: list[Tensor]


class FPNNeck(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.position_encoding = SinePositionEncoding(cfg.fpn_hidden_size // 2, normalize=True)
        in_channels = cfg.backbone_config.hidden_size
        self.fpn_layers = nn.ModuleList(
            FPNLevel(in_channels, cfg.fpn_hidden_size, scale) for scale in cfg.scale_factors
        )

    def forward(self, backbone_features: Tensor, num_levels: int | None = None) -> FPNFeatures:
        """``backbone_features [B, C_vit, H, W]`` -> the first ``num_levels`` levels (default: all)."""
        features, encodings = [], []
        for level in self.fpn_layers[:num_levels]:
            f = level(backbone_features)
            b, _, h, w = f.shape
            features.append(f)
            encodings.append(self.position_encoding(h, w, device=f.device, dtype=f.dtype, batch_size=b))
        return FPNFeatures(features, encodings)


@dataclass(frozen=True)
class VisionFeatures:
    """Output of :class:`VisionEncoder`.

    ``backbone_features``: the ViT's last map ``[B, C_vit, H, W]`` (channels-last view; the tracker
    neck reads it). ``fpn_features`` / ``fpn_position_encodings``: the detector neck's levels,
    finest first, as in :class:`FPNFeatures`.
    """

    backbone_features: Tensor
    fpn_features: list[Tensor]
    fpn_position_encodings: list[Tensor]


class VisionEncoder(nn.Module):
    """``detector_model.vision_encoder``: the ViT backbone and the detector's FPN neck."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.backbone = ViTBackbone(cfg.backbone_config)
        self.neck = FPNNeck(cfg)

    def forward(self, pixel_values: Tensor, num_levels: int | None = None) -> VisionFeatures:
        """``pixel_values [B, 3, H, W]`` (already normalised) -> :class:`VisionFeatures`."""
        feats = self.backbone(pixel_values)
        fpn = self.neck(feats, num_levels)
        return VisionFeatures(feats, fpn.features, fpn.position_encodings)
