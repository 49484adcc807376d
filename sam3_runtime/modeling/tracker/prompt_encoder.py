"""SAM prompt encoder of the SAM 3 tracker: points, boxes and mask prompts to embeddings.

Layout: objects are the batch dimension. Every object carries its own prompt set; sparse
embeddings come out as ``[N, T, C]`` tokens and dense embeddings as ``[N, C, h, w]`` (h, w =
the tracker's lowest-resolution feature size, ``image_size // patch_size``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sam3_runtime.config import TrackerPromptEncoderConfig

from .common import LayerNorm2d, activation_fn


class RandomFourierEncoding(nn.Module):
    """Positional encoding of normalised ``(x, y)`` coordinates with a fixed random projection.

    ``positional_embedding`` is a persistent buffer (it is part of the checkpoint).
    """

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_embedding", scale * torch.randn(2, channels // 2))

    def forward(self, coords: Tensor) -> Tensor:
        """``coords``: ``[..., 2]`` as (x, y) in [0, 1]. Returns ``[..., channels]`` in fp32.

        fp32 throughout: in bf16, coordinates divided by the image size keep ~3 significant
        digits, which visibly shifts the encoding; callers cast the result.
        """
        proj = (2.0 * coords.float() - 1.0) @ self.positional_embedding.float()
        proj = 2.0 * math.pi * proj
        return torch.cat((proj.sin(), proj.cos()), dim=-1)

    def grid(self, height: int, width: int) -> Tensor:
        """Encoding of the pixel-centre grid of an ``height x width`` map, ``[1, C, H, W]`` fp32."""
        device = self.positional_embedding.device
        y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        xy = torch.stack(torch.broadcast_tensors(x[None, :], y[:, None]), dim=-1)  # [H, W, 2] as (x, y)
        return self(xy).permute(2, 0, 1).unsqueeze(0)


class MaskEmbedding(nn.Module):
    """Mask prompt ``[N, 1, 4h, 4w]`` -> dense embedding ``[N, C, h, w]`` (two stride-2 convs)."""

    def __init__(self, cfg: TrackerPromptEncoderConfig) -> None:
        super().__init__()
        mid = cfg.mask_input_channels // 4
        self.conv1 = nn.Conv2d(1, mid, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(mid, cfg.mask_input_channels, kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(cfg.mask_input_channels, cfg.hidden_size, kernel_size=1)
        self.layer_norm1 = LayerNorm2d(mid, eps=cfg.layer_norm_eps)
        self.layer_norm2 = LayerNorm2d(cfg.mask_input_channels, eps=cfg.layer_norm_eps)
        self.act = activation_fn(cfg.hidden_act)

    def forward(self, masks: Tensor) -> Tensor:
        x = self.act(self.layer_norm1(self.conv1(masks)))
        x = self.act(self.layer_norm2(self.conv2(x)))
        return self.conv3(x)


class PromptEncoder(nn.Module):
    """Embeds point / box / mask prompts.

    Point labels: 1 positive, 0 negative, 2 / 3 box corners, -1 "not a point" (padding that
    still takes part in attention with a learned embedding), -10 ignored padding (zero
    embedding). Coordinates are pixels of the ``image_size`` x ``image_size`` model input.
    """

    def __init__(self, cfg: TrackerPromptEncoderConfig) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.input_image_size = cfg.image_size
        side = cfg.image_size // cfg.patch_size
        self.image_embedding_size = (side, side)
        self.mask_input_size = (4 * side, 4 * side)

        self.shared_embedding = RandomFourierEncoding(cfg.hidden_size, scale=cfg.scale)
        self.mask_embed = MaskEmbedding(cfg)
        self.no_mask_embed = nn.Embedding(1, cfg.hidden_size)
        self.point_embed = nn.Embedding(cfg.num_point_embeddings, cfg.hidden_size)
        self.not_a_point_embed = nn.Embedding(1, cfg.hidden_size)

    def _encode_pixels(self, xy: Tensor) -> Tensor:
        # +0.5: a pixel index refers to the centre of that pixel
        return self.shared_embedding((xy.float() + 0.5) / self.input_image_size)

    def embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """``points [N, K, 2]``, ``labels [N, K]`` -> ``[N, K (+1 if pad), C]``."""
        if pad:  # one extra "not a point" token, as SAM does when no box follows
            points = torch.cat((points, points.new_zeros(points.shape[0], 1, 2)), dim=1)
            labels = torch.cat((labels, labels.new_full((labels.shape[0], 1), -1)), dim=1)
        dtype = self.point_embed.weight.dtype
        emb = self._encode_pixels(points).to(dtype)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight.to(dtype), emb)
        emb = torch.where(labels != -10, emb, torch.zeros_like(emb))
        emb = emb + self.point_embed(labels[..., 0].clamp(min=0)) * (labels >= 0).to(dtype)
        return emb

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """``boxes [N, 4]`` (x1, y1, x2, y2) -> ``[N, 3, C]``: two corners and a "not a point" token."""
        corners = self._encode_pixels(boxes.reshape(-1, 2, 2)).to(self.point_embed.weight.dtype)
        corners = corners + self.point_embed.weight[2:4]
        pad = self.not_a_point_embed.weight.expand(corners.shape[0], 1, -1)
        return torch.cat((corners, pad), dim=1)

    def forward(
        self,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(sparse [N, T, C], dense [N, C, h, w])``.

        ``points [N, K, 2]`` + ``labels [N, K]``; ``boxes [N, 4]``; ``masks [N, 1, 4h, 4w]``
        (mask logits at the decoder's low-res mask size). Without a box the points get one
        padding token; with no points and no box the sparse tensor has ``T = 0``. Without a
        mask the dense output is the learned "no mask" embedding, as an expanded view.
        """
        tokens: list[Tensor] = []
        if points is not None:
            if labels is None:
                raise ValueError("point prompts need labels")
            tokens.append(self.embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self.embed_boxes(boxes))
        if batch_size is None:
            for t in (points, boxes, masks):
                if t is not None:
                    batch_size = t.shape[0]
                    break
            else:
                batch_size = 1
        weight = self.no_mask_embed.weight
        sparse = torch.cat(tokens, dim=1) if tokens else weight.new_zeros(batch_size, 0, self.hidden_size)
        if masks is not None:
            dense = self.mask_embed(masks.to(weight.dtype))
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(batch_size, -1, h, w)
        return sparse, dense
