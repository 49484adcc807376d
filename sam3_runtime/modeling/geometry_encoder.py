"""SAM 3 geometry (exemplar) encoder: turns box prompts into prompt tokens.

Each box becomes one token, the sum of four embeddings:

- a linear projection of its normalised (cx, cy, w, h),
- the image features inside the box, ROI-aligned to ``roi_size`` x ``roi_size`` and reduced
  by a ``roi_size`` convolution,
- a projection of a sine encoding of the box centre plus its raw height and width,
- a learned label embedding (0 = negative exemplar, 1 = positive exemplar).

A learned CLS token is appended after the valid boxes; the tokens are projected, then refined
by pre-norm transformer layers (self-attention among the prompt tokens, cross-attention to the
image tokens, MLP). The detector concatenates the result after the text tokens.

Parameter names follow transformers' ``Sam3GeometryEncoder`` (checkpoint prefix
``detector_model.geometry_encoder.``). The published transformers checkpoint carries no point
encoder weights, so point prompts are not supported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam3_runtime.config import GeometryEncoderConfig
from sam3_runtime.modeling.layers import Attention, FeedForward, box_cxcywh_to_xyxy, key_padding_mask
from sam3_runtime.modeling.position import SinePositionEncoding


@dataclass
class GeometryEncoderOutput:
    tokens: torch.Tensor
    """[N, K + 1, d] prompt tokens: valid boxes first, then CLS, then padding."""
    mask: torch.Tensor
    """[N, K + 1] bool, True = valid token (right-padded)."""


# ---------------------------------------------------------------------------------------------
# ROI align (torchvision.ops.roi_align semantics, written with plain tensor ops)
# ---------------------------------------------------------------------------------------------


def roi_align(
    features: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    output_size: int,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """Bilinear ROI align of ``features`` [B, C, H, W] over ``boxes_xyxy`` [B, K, 4] -> [B, K, C, R, R].

    Box coordinates are in feature-map pixels (spatial scale 1). The sampling rule is
    torchvision's: each output bin averages a regular grid of bilinear samples
    (``sampling_ratio`` per axis, or ``ceil(roi_extent / R)`` when it is <= 0); samples more
    than one pixel outside the map read zero, samples within one pixel clamp to the border.

    Because the grid is a product grid and a bilinear sample is a product of two 1-D hat
    weights, the average over a bin factorises into a row-weight matrix and a column-weight
    matrix: ``out = Wy @ F @ Wx^T`` per box, two small contractions instead of a gather per
    sample. Computed in fp32 (the weights are sums of many tiny terms) and returned in fp32.

    With an adaptive sampling grid the number of samples per axis depends on the box sizes,
    so its maximum is read back to the host once per call (only when ``sampling_ratio`` <= 0).
    """
    batch, channels, height, width = features.shape
    num_boxes = boxes_xyxy.shape[1]
    if num_boxes == 0:
        return features.new_zeros((batch, 0, channels, output_size, output_size), dtype=torch.float32)
    boxes = boxes_xyxy.float()
    offset = 0.5 if aligned else 0.0
    x0, y0, x1, y1 = (boxes - offset).unbind(-1)
    row_weights = _axis_weights(y0, y1, height, output_size, sampling_ratio, aligned)  # [B, K, R, H]
    col_weights = _axis_weights(x0, x1, width, output_size, sampling_ratio, aligned)  # [B, K, R, W]
    rows = torch.einsum("bkph,bchw->bkcpw", row_weights, features.float())
    return torch.einsum("bkcpw,bkqw->bkcpq", rows, col_weights)


def _axis_weights(
    start: torch.Tensor, end: torch.Tensor, size: int, bins: int, sampling_ratio: int, aligned: bool
) -> torch.Tensor:
    """Per-bin averaged bilinear weights along one axis: [B, K] box extents -> [B, K, bins, size]."""
    extent = end - start
    if not aligned:
        # torchvision forces degenerate boxes to span at least one pixel in the legacy mode
        extent = extent.clamp(min=1.0)
    bin_size = extent / bins
    if sampling_ratio > 0:
        grid = torch.full_like(extent, float(sampling_ratio))
        max_grid = sampling_ratio
    else:
        grid = torch.ceil(extent / bins).clamp(min=0.0)
        max_grid = max(int(grid.max().item()), 1)
    bin_idx = torch.arange(bins, device=start.device, dtype=torch.float32)
    sample_idx = torch.arange(max_grid, device=start.device, dtype=torch.float32)
    # same evaluation order as torchvision, so the sample positions agree to the last bit
    bin_start = start[..., None, None] + bin_idx[:, None] * bin_size[..., None, None]
    coord = bin_start + (sample_idx + 0.5) * bin_size[..., None, None] / grid[..., None, None]  # [B, K, R, S]
    valid = (sample_idx < grid[..., None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(0.0, size - 1)
    pixels = torch.arange(size, device=start.device, dtype=torch.float32)
    hat = (1.0 - (coord[..., None] - pixels).abs()).clamp(min=0.0)  # [B, K, R, S, size]
    summed = (hat * valid[..., None]).sum(dim=-2)
    return summed / grid.clamp(min=1.0)[..., None, None]


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------


class GeometryEncoderLayer(nn.Module):
    """Pre-norm block: prompt self-attention, cross-attention to image tokens, MLP."""

    def __init__(self, cfg: GeometryEncoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        # transformers builds these norms with nn.LayerNorm's default eps (1e-5), not cfg.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.num_attention_heads)
        self.cross_attn = Attention(d, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d, cfg.intermediate_size, cfg.hidden_act)
        self.layer_norm3 = nn.LayerNorm(d)

    def forward(
        self,
        tokens: torch.Tensor,
        self_attn_mask: torch.Tensor | None,
        image_keys: torch.Tensor,
        image_values: torch.Tensor,
    ) -> torch.Tensor:
        x = self.layer_norm1(tokens)
        tokens = tokens + self.self_attn(x, x, x, self_attn_mask)
        tokens = tokens + self.cross_attn(self.layer_norm2(tokens), image_keys, image_values)
        return tokens + self.mlp(self.layer_norm3(tokens))


class GeometryEncoder(nn.Module):
    """Box prompts -> prompt tokens ready to follow the text tokens."""

    def __init__(self, cfg: GeometryEncoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.hidden_size = d
        self.roi_size = cfg.roi_size
        self.label_embed = nn.Embedding(2, d)
        self.cls_embed = nn.Embedding(1, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, cfg.roi_size)
        # sine codes of the centre (d/2 per axis) plus raw height and width
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.position_encoding = SinePositionEncoding(d // 2)  # of the box centres; no weights
        self.vision_layer_norm = nn.LayerNorm(d)
        self.final_proj = nn.Linear(d, d)
        self.prompt_layer_norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(GeometryEncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.output_layer_norm = nn.LayerNorm(d)

    def forward(
        self,
        boxes: torch.Tensor,
        image_features: torch.Tensor,
        image_pos: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> GeometryEncoderOutput:
        """Encode N prompt rows of K boxes each.

        Args:
            boxes: [N, K, 4] normalised (cx, cy, w, h); K may be 0 (CLS token only).
            image_features: [B, d, H, W], the detector FPN level the DETR encoder reads (stride 14).
            image_pos: [B, d, H, W] its sine position encoding (None = zeros).
            box_labels: [N, K] 1 = positive, 0 = negative exemplar (None = all positive).
            box_mask: [N, K] bool, True = real box (None = all real). Must be right-padded:
                the CLS token goes right after the last valid box.
            image_index: [N] long, which of the B images each row prompts (None: B == N).
        """
        num_rows, num_boxes = boxes.shape[:2]
        device = boxes.device
        if box_mask is None:
            box_mask = torch.ones(num_rows, num_boxes, dtype=torch.bool, device=device)
        box_mask = box_mask.bool()
        if box_labels is None:
            box_labels = torch.ones(num_rows, num_boxes, dtype=torch.long, device=device)
        box_labels = torch.where(box_mask, box_labels.long(), 0)
        if image_index is not None:
            image_features = image_features.index_select(0, image_index)
            image_pos = None if image_pos is None else image_pos.index_select(0, image_index)

        box_tokens = self._embed_boxes(boxes, box_labels, image_features)
        tokens, mask = self._append_cls(box_tokens, box_mask)
        tokens = self.prompt_layer_norm(self.final_proj(tokens))

        # the image tokens attend as raw FPN features (the layer norm above only feeds the ROI pooling)
        values = image_features.flatten(2).transpose(1, 2)
        keys = values if image_pos is None else values + image_pos.flatten(2).transpose(1, 2).to(values.dtype)
        attn_mask = key_padding_mask(mask)
        for layer in self.layers:
            tokens = layer(tokens, attn_mask, keys, values)
        return GeometryEncoderOutput(tokens=self.output_layer_norm(tokens), mask=mask)

    def _embed_boxes(self, boxes: torch.Tensor, labels: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        num_rows, num_boxes = boxes.shape[:2]
        dtype = image_features.dtype
        embed = self.boxes_direct_project(boxes.to(dtype)) + self.label_embed(labels)
        if num_boxes == 0:
            return embed

        height, width = image_features.shape[-2:]
        normed = self.vision_layer_norm(image_features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scale = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
        boxes_px = box_cxcywh_to_xyxy(boxes.float()) * scale
        pooled = roi_align(normed, boxes_px, self.roi_size).to(dtype)  # [N, K, d, R, R]
        pooled = self.boxes_pool_project(pooled.flatten(0, 1)).view(num_rows, num_boxes, self.hidden_size)

        cx, cy, w, h = boxes.float().unbind(-1)
        pos_x, pos_y = self.position_encoding.encode_xy(cx, cy)
        pos = torch.cat((pos_y, pos_x, h[..., None], w[..., None]), dim=-1)
        return embed + pooled + self.boxes_pos_enc_project(pos.to(dtype))

    def _append_cls(self, box_tokens: torch.Tensor, box_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Put CLS right after each row's valid boxes; returns [N, K + 1, d] tokens and validity."""
        num_rows, num_boxes, d = box_tokens.shape
        num_valid = box_mask.sum(dim=1)
        slots = torch.arange(num_boxes + 1, device=box_tokens.device)
        tokens = F.pad(box_tokens, (0, 0, 0, 1))
        is_cls = (slots == num_valid[:, None])[..., None]
        tokens = torch.where(is_cls, self.cls_embed.weight.view(1, 1, d).to(tokens.dtype), tokens)
        return tokens, slots <= num_valid[:, None]
