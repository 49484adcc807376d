"""Small building blocks shared by the SAM 3 modules.

Each block keeps the parameter names of the transformers checkpoint layout, so the
modules that use them load transformers-format weights strictly:

- ``FeedForward``: ``fc1`` / ``fc2`` (transformer-layer MLPs: ViT, text, geometry, DETR).
- ``DecoderMLP``: ``layer1`` / ``layer2`` [/ ``layer3``], ReLU (DETR heads, scoring).
- ``MLP``: ``proj_in`` / ``layers.N`` / ``proj_out`` (SAM2-style tracker heads).
- ``Attention``: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` over SDPA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    # transformers' "gelu" is the exact erf form, not the tanh approximation
    "gelu": F.gelu,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


class FeedForward(nn.Module):
    """Two linear layers with an activation between them (``fc1`` -> act -> ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DecoderMLP(nn.Module):
    """A 2- or 3-layer ReLU MLP named ``layer1``, ``layer2`` (, ``layer3``); no activation on the output."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers not in (2, 3):
            raise ValueError(f"DecoderMLP supports 2 or 3 layers, got {num_layers}")
        self.num_layers = num_layers
        self.layer1 = nn.Linear(input_dim, hidden_dim)
        if num_layers == 2:
            self.layer2 = nn.Linear(hidden_dim, output_dim)
        else:
            self.layer2 = nn.Linear(hidden_dim, hidden_dim)
            self.layer3 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(F.relu(self.layer1(x)))
        if self.num_layers == 3:
            x = self.layer3(F.relu(x))
        return x


class MLP(nn.Module):
    """SAM2-style MLP: ``proj_in`` -> act -> (``layers.i`` -> act)* -> ``proj_out`` [-> sigmoid]."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: str = "relu",
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"MLP needs at least 2 layers, got {num_layers}")
        self.proj_in = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers - 2))
        self.proj_out = nn.Linear(hidden_dim, output_dim)
        self.act = activation_fn(activation)
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.proj_in(x))
        for layer in self.layers:
            x = self.act(layer(x))
        x = self.proj_out(x)
        return x.sigmoid() if self.sigmoid_output else x


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections, computed by SDPA.

    ``internal_dim`` (default ``dim``) is the width of the projected q/k/v, which SAM2-style
    blocks shrink by a downsample rate; ``kv_dim`` (default ``dim``) is the width of the key
    and value inputs when they differ from the queries' (e.g. 64-channel memories).
    """

    def __init__(self, dim: int, num_heads: int, internal_dim: int | None = None, kv_dim: int | None = None) -> None:
        super().__init__()
        internal_dim = dim if internal_dim is None else internal_dim
        kv_dim = dim if kv_dim is None else kv_dim
        if internal_dim % num_heads:
            raise ValueError(f"attention width {internal_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = internal_dim // num_heads
        self.q_proj = nn.Linear(dim, internal_dim)
        self.k_proj = nn.Linear(kv_dim, internal_dim)
        self.v_proj = nn.Linear(kv_dim, internal_dim)
        self.o_proj = nn.Linear(internal_dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, heads * head_dim] -> [B, heads, L, head_dim] (a view)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, Lq, dim], key/value [B, Lk, kv_dim] -> [B, Lq, dim].

        ``attn_mask`` broadcasts to [B, heads, Lq, Lk]: boolean (True = may attend) or an
        additive float bias in the query's dtype.
        """
        q = self.split_heads(self.q_proj(query))
        k = self.split_heads(self.k_proj(key))
        v = self.split_heads(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o_proj(out.transpose(1, 2).flatten(2))


def key_padding_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """[B, Lk] boolean validity (True = real token) -> SDPA boolean mask [B, 1, 1, Lk]."""
    if valid is None:
        return None
    return valid.bool()[:, None, None, :]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x floored at ``eps`` (SAM 3 uses 1e-3)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)
