"""SAM 3 query classification: dot product of each decoder query with the pooled prompt.

The prompt side (MLP, masked mean pooling, projection) depends on the prompt alone, so a
caller that reuses a prompt across images (a text concept) can compute ``prompt_embedding``
once and call ``score`` per batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam3_runtime.config import DETRDecoderConfig
from sam3_runtime.modeling.layers import DecoderMLP

# The checkpoint's layer norms use PyTorch's default eps, not ``layer_norm_eps`` of the config.
LAYER_NORM_EPS = 1e-5
LOGIT_CLAMP = 12.0


class DotProductScoring(nn.Module):
    """Class logits per query; names match ``detector_model.dot_product_scoring``."""

    def __init__(self, cfg: DETRDecoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.text_mlp = DecoderMLP(d, cfg.intermediate_size, d, num_layers=2)
        self.text_mlp_out_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.text_proj = nn.Linear(d, d)
        self.query_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)

    def prompt_embedding(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """prompt [N, T, d], prompt_mask [N, T] bool (True = real token) or None -> [N, d]."""
        feats = self.text_mlp_out_norm(prompt + self.text_mlp(prompt))
        if prompt_mask is None:
            pooled = feats.mean(dim=1)
        else:
            valid = prompt_mask.to(feats.dtype).unsqueeze(-1)
            pooled = (feats * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
        return self.text_proj(pooled)

    def score(self, query_states: torch.Tensor, prompt_embedding: torch.Tensor) -> torch.Tensor:
        """query_states [..., N, Q, d], prompt_embedding [N, d] -> logits [..., N, Q], clamped to +-12."""
        queries = self.query_proj(query_states)
        logits = (queries @ prompt_embedding.unsqueeze(-1)).squeeze(-1) * self.scale
        return logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def forward(
        self,
        query_states: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query_states [..., N, Q, d] (e.g. ``DetrDecoderOutput.hidden_states`` [L, N, Q, d] or its
        last layer [N, Q, d]); prompt [N, T, d]; prompt_mask [N, T] or None -> logits [..., N, Q]."""
        return self.score(query_states, self.prompt_embedding(prompt, prompt_mask))
