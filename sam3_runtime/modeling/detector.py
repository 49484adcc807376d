"""The SAM 3 detector: image + prompt -> scored boxes and masks of every instance.

Work is split so that each part runs as rarely as it can: ``encode_image`` once per image,
``encode_text`` once per distinct prompt (callers cache it), and ``detect`` once per
(image, prompt) pair, all pairs in one batch that indexes into the per-image features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam3_runtime.config import DetectorConfig
from sam3_runtime.modeling.detr_decoder import DetrDecoder
from sam3_runtime.modeling.detr_encoder import DetrEncoder
from sam3_runtime.modeling.fpn import VisionEncoder, VisionFeatures
from sam3_runtime.modeling.geometry_encoder import GeometryEncoder
from sam3_runtime.modeling.layers import box_cxcywh_to_xyxy
from sam3_runtime.modeling.mask_head import MaskHead
from sam3_runtime.modeling.scoring import DotProductScoring
from sam3_runtime.modeling.text_encoder import ClipTextModelWithProjection, TextFeatures

# The detector reads the first three FPN levels (strides 3.5, 7 and 14 of a 1008 px input:
# 288², 144², 72²); the fourth (36²) exists for the checkpoint and is never used.
DETECTOR_FPN_LEVELS = 3


@dataclass
class DetectorOutput:
    """Per (image, prompt) pair, Q queries each.

    pred_logits: [N, Q] class logits. presence_logits: [N, 1]. Score = sigmoid of both, multiplied.
    pred_boxes: [N, Q, 4] normalised (x0, y0, x1, y1), fp32.
    pred_masks: [N, Q, Hm, Wm] mask logits at the mask head's resolution (288² at full size).
    query_states: [N, Q, d] the last decoder layer's query states.
    """

    pred_logits: torch.Tensor
    presence_logits: torch.Tensor
    pred_boxes: torch.Tensor
    pred_masks: torch.Tensor
    query_states: torch.Tensor

    @property
    def scores(self) -> torch.Tensor:
        return self.pred_logits.float().sigmoid() * self.presence_logits.float().sigmoid()


class Sam3Detector(nn.Module):
    """``detector_model.*`` of a SAM 3 checkpoint."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.detr_encoder_config.hidden_size
        self.vision_encoder = VisionEncoder(cfg.vision_config)
        self.text_encoder = ClipTextModelWithProjection(cfg.text_config)
        self.text_projection = nn.Linear(cfg.text_config.hidden_size, d)
        self.geometry_encoder = GeometryEncoder(cfg.geometry_encoder_config)
        self.detr_encoder = DetrEncoder(cfg.detr_encoder_config)
        self.detr_decoder = DetrDecoder(cfg.detr_decoder_config)
        self.mask_decoder = MaskHead(cfg.mask_decoder_config)
        self.dot_product_scoring = DotProductScoring(cfg.detr_decoder_config)

    def encode_image(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """Normalised pixels ``[B, 3, S, S]`` -> backbone map and the detector's FPN levels."""
        return self.vision_encoder(pixel_values, num_levels=DETECTOR_FPN_LEVELS)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Token ids ``[P, L]`` -> per-token prompt features ``[P, L, d]`` and their mask."""
        hidden = self.text_encoder(input_ids, attention_mask)
        return TextFeatures(features=self.text_projection(hidden), mask=attention_mask.bool())

    def detect(
        self,
        vision: VisionFeatures,
        image_index: torch.Tensor,
        prompt_features: torch.Tensor,
        prompt_mask: torch.Tensor,
        boxes: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """Run N (image, prompt) pairs.

        image_index: [N] which image of ``vision`` each pair reads.
        prompt_features / prompt_mask: [N, L, d] / [N, L] text tokens of each pair.
        boxes: [N, K, 4] exemplar boxes, normalised cxcywh; box_labels [N, K] (1 positive,
            0 negative); box_mask [N, K] valid boxes (right-padded). Pairs without a valid box
            get no geometry tokens at all, exactly as if the encoder had not run for them.
        """
        feats, pos = vision.fpn_features, vision.fpn_position_encodings
        token_level = feats[-1]
        token_pos = pos[-1][:1]  # the sine encoding is the same for every image: broadcast, never gather
        prompt, mask = prompt_features, prompt_mask.bool()
        if boxes is not None and boxes.shape[1] > 0:
            box_mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device) if box_mask is None else box_mask
            geo = self.geometry_encoder(
                boxes, token_level, pos[-1], box_labels=box_labels, box_mask=box_mask, image_index=image_index
            )
            has_boxes = box_mask.any(dim=1, keepdim=True)
            prompt = torch.cat([prompt, geo.tokens.to(prompt.dtype)], dim=1)
            mask = torch.cat([mask, geo.mask & has_boxes], dim=1)

        enc = self.detr_encoder(token_level, token_pos, prompt, mask, image_index=image_index)
        dec = self.detr_decoder(enc.image_tokens, enc.image_pos, enc.spatial_shape, prompt, mask)
        queries = dec.hidden_states[-1]
        logits = self.dot_product_scoring(queries, prompt, mask)
        masks = self.mask_decoder(
            queries, enc.image_tokens, feats[:-1], enc.spatial_shape, prompt=prompt, prompt_mask=mask,
            image_index=image_index,
        ).mask_logits
        return DetectorOutput(
            pred_logits=logits,
            presence_logits=dec.presence_logits[-1],
            pred_boxes=box_cxcywh_to_xyxy(dec.pred_boxes[-1]),
            pred_masks=masks,
            query_states=queries,
        )
