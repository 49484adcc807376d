"""SAM 3 DETR decoder: learned queries plus a presence token, iterative box refinement.

Each layer conditions the queries on their current reference boxes twice: through a query
position embedding (sine encoding of the box -> MLP) and through a box relative-position bias
on the image cross-attention (how far each image token lies from the box edges). After each
layer the box head predicts a correction of the boxes in logit space. The presence token sits
at position 0; it carries no box and predicts whether the concept occurs in the image at all.

Reference boxes are kept in fp32 whatever the model dtype: they are refined six times over and
sub-pixel errors in bf16 would add up (the fp32 path reproduces transformers exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam3_runtime.config import DETRDecoderConfig
from sam3_runtime.modeling.layers import (
    Attention,
    DecoderMLP,
    FeedForward,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
    key_padding_mask,
)
from sam3_runtime.modeling.position import SinePositionEncoding

# The checkpoint's layer norms use PyTorch's default eps, not ``layer_norm_eps`` of the config.
LAYER_NORM_EPS = 1e-5
PRESENCE_LOGIT_CLAMP = 10.0


@dataclass
class DetrDecoderOutput:
    """Per-layer decoder results, L = number of decoder layers, Q = number of queries.

    hidden_states: [L, N, Q, d] query states after the output layer norm (what the box head,
        the scoring and the mask head read); model dtype.
    reference_boxes: [L, N, Q, 4] the boxes each layer was conditioned on (layer 0: the
        learned initial boxes); cxcywh, normalised to [0, 1]; fp32.
    pred_boxes: [L, N, Q, 4] the boxes each layer predicts (its refined reference boxes);
        cxcywh, normalised; fp32. ``pred_boxes[-1]`` are the detector's boxes.
    presence_logits: [L, N, 1] presence-token logits, clamped to +-10; model dtype.
    """

    hidden_states: torch.Tensor
    reference_boxes: torch.Tensor
    pred_boxes: torch.Tensor
    presence_logits: torch.Tensor

    @property
    def pred_boxes_xyxy(self) -> torch.Tensor:
        """[N, Q, 4] the last layer's boxes as normalised (x0, y0, x1, y1)."""
        return box_cxcywh_to_xyxy(self.pred_boxes[-1])


def _log_scale(delta: torch.Tensor) -> torch.Tensor:
    """Signed log2 scaling of normalised distances: ~linear near the box edge, compressed far away."""
    delta = delta * 8
    return torch.sign(delta) * torch.log2(delta.abs() + 1.0) / 3.0  # 3 = log2(8)


class DetrDecoderLayer(nn.Module):
    """Post-norm block: self-attention, cross-attention to the prompt, to the image, MLP."""

    def __init__(self, cfg: DETRDecoderConfig) -> None:
        super().__init__()
        d, heads = cfg.hidden_size, cfg.num_attention_heads
        self.self_attn = Attention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.text_cross_attn = Attention(d, heads)
        self.text_cross_attn_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.vision_cross_attn = Attention(d, heads)
        self.vision_cross_attn_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(d, cfg.intermediate_size, cfg.hidden_act)
        self.mlp_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        prompt: torch.Tensor,
        prompt_attn_mask: torch.Tensor | None,
        image_tokens: torch.Tensor,
        image_keys: torch.Tensor,
        image_attn_bias: torch.Tensor,
    ) -> torch.Tensor:
        """x [N, 1+Q, d] (presence token first); query_pos [N, 1+Q, d] (zero for the presence
        token); image_keys = image tokens + their position encoding; image_attn_bias
        [N, heads, 1+Q, H*W] additive."""
        q = x + query_pos
        x = self.self_attn_layer_norm(x + self.self_attn(q, q, x))
        x = self.text_cross_attn_layer_norm(x + self.text_cross_attn(x + query_pos, prompt, prompt, prompt_attn_mask))
        attn = self.vision_cross_attn(x + query_pos, image_keys, image_tokens, image_attn_bias)
        x = self.vision_cross_attn_layer_norm(x + attn)
        return self.mlp_layer_norm(x + self.mlp(x))


class DetrDecoder(nn.Module):
    """DETR decoder with box refinement and presence token; names match ``detector_model.detr_decoder``."""

    def __init__(self, cfg: DETRDecoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.hidden_size = d
        self.num_heads = cfg.num_attention_heads
        self.layers = nn.ModuleList(DetrDecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.output_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.box_head = DecoderMLP(d, d, 4, num_layers=3)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        # initial boxes, stored as logits
        self.reference_points = nn.Embedding(cfg.num_queries, 4)
        self.presence_token = nn.Embedding(1, d)
        self.presence_head = DecoderMLP(d, d, 1, num_layers=3)
        self.presence_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.ref_point_head = DecoderMLP(2 * d, d, d, num_layers=2)
        self.position_encoding = SinePositionEncoding(d // 2)  # of the reference boxes; no weights
        self.box_rpb_embed_x = DecoderMLP(2, d, cfg.num_attention_heads, num_layers=2)
        self.box_rpb_embed_y = DecoderMLP(2, d, cfg.num_attention_heads, num_layers=2)

    def box_attention_bias(
        self, boxes: torch.Tensor, spatial_shape: tuple[int, int], dtype: torch.dtype
    ) -> torch.Tensor:
        """Relative-position bias of every query box to every image token.

        boxes [N, Q, 4] cxcywh (fp32) -> [N, heads, 1+Q, H*W] in ``dtype``; row 0 (the presence
        token) is zero, so it attends to the image without spatial preference. The bias
        factorises into a per-row and a per-column term, each an MLP of the signed, log-scaled
        distances from the token's coordinate to the box's two edges.
        """
        height, width = spatial_shape
        n, q = boxes.shape[:2]
        xyxy = box_cxcywh_to_xyxy(boxes.float())
        ys = torch.arange(height, device=boxes.device, dtype=torch.float32) / height
        xs = torch.arange(width, device=boxes.device, dtype=torch.float32) / width
        dy = _log_scale(ys[:, None] - xyxy[:, :, None, 1::2])  # [N, Q, H, 2]: (y - y0, y - y1)
        dx = _log_scale(xs[:, None] - xyxy[:, :, None, 0::2])  # [N, Q, W, 2]: (x - x0, x - x1)
        bias_y = self.box_rpb_embed_y(dy.to(dtype)).permute(0, 3, 1, 2)  # [N, heads, Q, H]
        bias_x = self.box_rpb_embed_x(dx.to(dtype)).permute(0, 3, 1, 2)  # [N, heads, Q, W]

        bias = bias_y.new_zeros(n, self.num_heads, 1 + q, height, width)
        bias[:, :, 1:] = bias_y[..., None]
        bias[:, :, 1:] += bias_x[..., None, :]
        return bias.flatten(3)

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_pos: torch.Tensor,
        spatial_shape: tuple[int, int],
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
    ) -> DetrDecoderOutput:
        """Decode N (image, prompt) pairs.

        image_tokens: [N, H*W, d] fused image tokens (``DetrEncoderOutput.image_tokens``).
        image_pos: [1 or N, H*W, d] their position encoding (``DetrEncoderOutput.image_pos``).
        spatial_shape: (H, W) of the token grid.
        prompt: [N, T, d] prompt tokens; prompt_mask [N, T] bool, True = real token, or None.
        """
        n = image_tokens.shape[0]
        dtype = image_tokens.dtype
        image_keys = image_tokens + image_pos
        prompt_attn_mask = key_padding_mask(prompt_mask)

        queries = self.query_embed.weight.to(dtype).expand(n, -1, -1)
        presence = self.presence_token.weight.to(dtype).expand(n, -1, -1)
        x = torch.cat([presence, queries], dim=1)
        boxes = self.reference_points.weight.float().sigmoid().expand(n, -1, -1)

        hidden, refs, preds, presence_logits = [], [], [], []
        for layer in self.layers:
            query_pos = self.ref_point_head(self.position_encoding.encode_boxes(boxes).to(dtype))
            query_pos = F.pad(query_pos, (0, 0, 1, 0))  # zero position for the presence token
            bias = self.box_attention_bias(boxes, spatial_shape, dtype)
            x = layer(x, query_pos, prompt, prompt_attn_mask, image_tokens, image_keys, bias)

            states = self.output_layer_norm(x[:, 1:])
            new_boxes = (inverse_sigmoid(boxes) + self.box_head(states).float()).sigmoid()
            logit = self.presence_head(self.presence_layer_norm(x[:, :1])).squeeze(-1)

            hidden.append(states)
            refs.append(boxes)
            preds.append(new_boxes)
            presence_logits.append(logit.clamp(-PRESENCE_LOGIT_CLAMP, PRESENCE_LOGIT_CLAMP))
            boxes = new_boxes

        return DetrDecoderOutput(
            hidden_states=torch.stack(hidden),
            reference_boxes=torch.stack(refs),
            pred_boxes=torch.stack(preds),
            presence_logits=torch.stack(presence_logits),
        )
