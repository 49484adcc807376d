"""SAM mask decoder of the SAM 3 tracker (two-way transformer + hypernetwork mask head).

Objects are the batch dimension: ``image_embeddings [N, C, h, w]`` with one prompt-token set
per object ``[N, T, C]``. Besides masks and IoU estimates it predicts an object-score logit
(is the object visible at all) and returns the mask-token outputs that the tracker turns into
object pointers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_runtime.config import TrackerMaskDecoderConfig

from .common import MLP, LayerNorm2d


class SamAttention(nn.Module):
    """Multi-head attention whose inner width may be reduced by ``downsample_rate``."""

    def __init__(self, hidden_size: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = hidden_size // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, inner)
        self.k_proj = nn.Linear(hidden_size, inner)
        self.v_proj = nn.Linear(hidden_size, inner)
        self.o_proj = nn.Linear(inner, hidden_size)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class TwoWayAttentionBlock(nn.Module):
    """Tokens self-attend, attend to the image, pass an MLP; then the image attends to the tokens."""

    def __init__(self, cfg: TrackerMaskDecoderConfig, skip_first_layer_pe: bool) -> None:
        super().__init__()
        c, heads = cfg.hidden_size, cfg.num_attention_heads
        self.self_attn = SamAttention(c, heads, downsample_rate=1)
        self.layer_norm1 = nn.LayerNorm(c)
        self.cross_attn_token_to_image = SamAttention(c, heads, cfg.attention_downsample_rate)
        self.layer_norm2 = nn.LayerNorm(c)
        # depth of this MLP is tied to num_hidden_layers in the reference (2 in every checkpoint)
        self.mlp = MLP(c, cfg.mlp_dim, c, num_layers=cfg.num_hidden_layers)
        self.layer_norm3 = nn.LayerNorm(c)
        self.layer_norm4 = nn.LayerNorm(c)
        self.cross_attn_image_to_token = SamAttention(c, heads, cfg.attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            # first layer: the tokens *are* the prompt embeddings, so no residual and no extra PE
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.layer_norm1(queries)

        k = keys + key_pe
        queries = self.layer_norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.layer_norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.layer_norm4(keys + self.cross_attn_image_to_token(keys + key_pe, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, cfg: TrackerMaskDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(cfg, skip_first_layer_pe=(i == 0)) for i in range(cfg.num_hidden_layers)
        )
        self.final_attn_token_to_image = SamAttention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.attention_downsample_rate
        )
        self.layer_norm_final_attn = nn.LayerNorm(cfg.hidden_size)

    def forward(self, tokens: Tensor, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens [N, T, C]``, ``image`` / ``image_pe`` ``[N, HW, C]`` -> updated (tokens, image)."""
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, image_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys)
        return self.layer_norm_final_attn(queries + attn), keys


@dataclass
class MaskDecoderOutput:
    masks: Tensor  # [N, K, 4h, 4w] mask logits; K = num_multimask_outputs or 1
    iou_scores: Tensor  # [N, K] predicted IoU (sigmoid)
    mask_tokens: Tensor  # [N, K, C] transformer output of the mask tokens behind ``masks``
    object_score_logits: Tensor  # [N, 1] > 0 means "object visible"


class MaskDecoder(nn.Module):
    def __init__(self, cfg: TrackerMaskDecoderConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.obj_score_token = nn.Embedding(1, c)
        self.transformer = TwoWayTransformer(cfg)

        self.upscale_conv1 = nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2)
        self.upscale_conv2 = nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2)
        self.upscale_layer_norm = LayerNorm2d(c // 4, eps=1e-6)
        # 1x1 projections of the stride-4 / stride-8 backbone levels; the tracker applies them
        # once per frame (TrackerModel.project_high_res_features), not once per object
        self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)

        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(
            c, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth, sigmoid_output=True
        )
        self.pred_obj_score_head = MLP(c, c, 1, 3)

        self.dynamic_multimask_via_stability = cfg.dynamic_multimask_via_stability
        self.stability_delta = cfg.dynamic_multimask_stability_delta
        self.stability_thresh = cfg.dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        high_res_features: tuple[Tensor, Tensor],
        multimask_output: bool,
    ) -> MaskDecoderOutput:
        """Predict masks.

        image_embeddings: ``[N, C, h, w]``; image_pe: ``[1 or N, C, h, w]``;
        sparse_prompt_embeddings: ``[N, T, C]`` (T may be 0); dense_prompt_embeddings:
        ``[1 or N, C, h, w]``; high_res_features: ``(feat_s0 [1 or N, C/8, 4h, 4w],
        feat_s1 [1 or N, C/4, 2h, 2w])`` already projected by ``conv_s0`` / ``conv_s1``.
        multimask_output: return the 3 multimask candidates; otherwise one mask (token 0, or
        with dynamic multimask the best candidate when token 0's mask is unstable).
        """
        n, c, h, w = image_embeddings.shape
        dtype = self.iou_token.weight.dtype
        out_tokens = torch.cat((self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight), dim=0)
        tokens = torch.cat((out_tokens.expand(n, -1, -1), sparse_prompt_embeddings.to(dtype)), dim=1)

        src = (image_embeddings + dense_prompt_embeddings).flatten(2).transpose(1, 2)
        pos = image_pe.to(src.dtype).flatten(2).transpose(1, 2).expand(n, -1, -1)
        tokens_out, src = self.transformer(tokens, src, pos)
        obj_token_out = tokens_out[:, 0]
        iou_token_out = tokens_out[:, 1]
        mask_tokens_out = tokens_out[:, 2 : 2 + self.num_mask_tokens]

        feat_s0, feat_s1 = high_res_features
        src = src.transpose(1, 2).reshape(n, c, h, w)
        up = F.gelu(self.upscale_layer_norm(self.upscale_conv1(src) + feat_s1))
        up = F.gelu(self.upscale_conv2(up) + feat_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # [N, M, C/8]
        masks = (hyper_in @ up.flatten(2)).unflatten(-1, up.shape[-2:])  # [N, M, 4h, 4w]

        iou_pred = self.iou_prediction_head(iou_token_out)
        object_score_logits = self.pred_obj_score_head(obj_token_out)

        if multimask_output:
            masks, iou_pred, mask_tokens_out = masks[:, 1:], iou_pred[:, 1:], mask_tokens_out[:, 1:]
        else:
            if self.dynamic_multimask_via_stability and not self.training:
                masks, iou_pred = self.dynamic_multimask_via_stability_select(masks, iou_pred)
            else:
                masks, iou_pred = masks[:, :1], iou_pred[:, :1]
            # note: the pointer token stays token 0 even when a multimask candidate was picked
            mask_tokens_out = mask_tokens_out[:, :1]
        return MaskDecoderOutput(masks, iou_pred, mask_tokens_out, object_score_logits)

    def stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU between the masks thresholded at +delta and -delta, ``[...]`` from ``[..., H, W]``."""
        flat = mask_logits.flatten(-2)
        inter = (flat > self.stability_delta).sum(-1).float()
        union = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(union > 0, inter / union, torch.ones_like(inter))

    def dynamic_multimask_via_stability_select(self, masks: Tensor, iou_pred: Tensor) -> tuple[Tensor, Tensor]:
        """Single-mask output that falls back to the best multimask candidate when token 0 is unstable.

        ``masks [N, M, H, W]``, ``iou_pred [N, M]`` -> ``([N, 1, H, W], [N, 1])``.
        """
        best = iou_pred[:, 1:].argmax(dim=-1, keepdim=True)  # [N, 1]
        best_masks = masks[:, 1:].gather(1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
        best_iou = iou_pred[:, 1:].gather(1, best)
        stable = self.stability_scores(masks[:, :1]) >= self.stability_thresh  # [N, 1]
        out_masks = torch.where(stable[:, :, None, None], masks[:, :1], best_masks)
        out_iou = torch.where(stable, iou_pred[:, :1], best_iou)
        return out_masks, out_iou
