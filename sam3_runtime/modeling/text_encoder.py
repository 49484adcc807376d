"""SAM 3 text side: a CLIP text transformer plus a linear map to the detector width.

A prompt's ``[P, L]`` token ids become ``[P, L, d_model]`` per-token features (every token, not
a pooled vector: the detector's fusion encoder and decoder cross-attend to all of them) and a
``[P, L]`` mask of real tokens.

Weight layout (the transformers checkpoint's): ``TextEncoder`` holds two children,

- ``text_encoder``: a CLIP text model with projection (``text_encoder.text_model.*`` and
  ``text_encoder.text_projection.weight``),
- ``text_projection``: ``Linear(hidden_size, d_model)``,

so its state dict is the checkpoint's ``detector_model.text_encoder.*`` and
``detector_model.text_projection.*`` entries with the ``detector_model.`` prefix stripped
(``select_text_weights`` does that). CLIP's pooled end-of-text output and its own 512-d
``text_encoder.text_projection`` are never used by SAM 3: the weight is kept so that checkpoints
load strictly, but it is not computed.

``TextEmbeddingCache`` keeps encoded prompts so that each concept is encoded once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig

# Prefix of the text weights inside a transformers-format SAM 3 (video) checkpoint.
CHECKPOINT_PREFIX = "detector_model."
_TEXT_CHILDREN = ("text_encoder.", "text_projection.")


@dataclass
class TextFeatures:
    """Encoded prompts as the detector consumes them.

    features: [P, L, d_model] per-token features (padded positions hold finite values that the
        detector must ignore through ``mask``).
    mask: [P, L] bool, True for real tokens (start, words, end), False for padding.
    """

    features: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[0]


def select_text_weights(
    state_dict: Mapping[str, torch.Tensor], prefix: str = CHECKPOINT_PREFIX
) -> dict[str, torch.Tensor]:
    """The entries of a full checkpoint that belong to ``TextEncoder``, with ``prefix`` stripped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name.startswith(_TEXT_CHILDREN):
                out[name] = value
    return out


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# SAM 3 uses "gelu" (exact erf form); original OpenAI CLIP checkpoints use "quick_gelu".
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "quick_gelu": _quick_gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
}


class ClipTextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class ClipAttention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        if dim % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_attention_heads {cfg.num_attention_heads}")
        self.num_heads = cfg.num_attention_heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: [P, L, C]; allowed: [P, 1, L, L] bool, True where a query may attend to a key."""
        p, length, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(p, length, self.num_heads, c // self.num_heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(p, length, c))


class ClipMLP(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        try:
            self.act = _ACTIVATIONS[cfg.hidden_act]
        except KeyError:
            raise ValueError(f"unsupported text hidden_act {cfg.hidden_act!r}; known: {sorted(_ACTIVATIONS)}") from None
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.self_attn = ClipAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = ClipMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), allowed)
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, allowed)
        return x


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[P, L] token mask (1 = real) -> [P, 1, L, L] bool: causal AND key is a real token.

    A query that could see no key at all (only possible with a padded first position) is let
    through to itself: a fully masked softmax row is NaN, and a NaN value vector poisons every
    other row too (0 * NaN). With CLIP's right padding this never triggers, so the numbers are
    those of the reference.
    """
    length = attention_mask.shape[-1]
    eye = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal & attention_mask.bool()[:, None, None, :]
    blind = ~allowed.any(dim=-1, keepdim=True)
    return allowed | (blind & eye)


class ClipTextTransformer(nn.Module):
    """Token ids -> final-layer-normed per-token hidden states [P, L, hidden_size]."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.max_length = cfg.max_position_embeddings
        self.embeddings = ClipTextEmbeddings(cfg)
        self.encoder = ClipEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] > self.max_length:
            raise ValueError(f"text has {input_ids.shape[-1]} tokens; the encoder takes at most {self.max_length}")
        x = self.embeddings(input_ids)
        x = self.encoder(x, causal_padding_mask(attention_mask))
        return self.final_layer_norm(x)


class ClipTextModelWithProjection(nn.Module):
    """CLIP text model as SAM 3 checkpoints store it (``text_model`` + ``text_projection``).

    ``text_projection`` (to CLIP's joint image-text space) belongs to CLIP's pooled output,
    which SAM 3 does not use; it is a loadable weight only.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.text_model = ClipTextTransformer(cfg)
        self.text_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids, attention_mask)


class TextEncoder(nn.Module):
    """Prompts (token ids) -> per-token features in the detector's width.

    Args:
        cfg: the text transformer's sizes (``DetectorConfig.text_config``).
        d_model: the detector width (``DETREncoderConfig.hidden_size``, 256 for SAM 3).
    """

    def __init__(self, cfg: TextConfig, d_model: int) -> None:
        super().__init__()
        self.text_encoder = ClipTextModelWithProjection(cfg)
        self.text_projection = nn.Linear(cfg.hidden_size, d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextFeatures:
        """input_ids: [P, L] int64; attention_mask: [P, L] (1/True = real token), None = all real."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [P, L], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        hidden = self.text_encoder(input_ids, attention_mask)
        return TextFeatures(features=self.text_projection(hidden), mask=attention_mask.bool())


class TextEmbeddingCache:
    """A bounded LRU of encoded prompts, keyed by the prompt string.

    One cache belongs to one model at one dtype and device: call ``clear()`` if those change.
    Thread-safe; ``compute_fn`` runs outside the lock (two threads missing the same prompt at the
    same time may both encode it, which is harmless).
    """

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get_or_compute(self, prompts: Sequence[str], compute_fn: Callable[[list[str]], TextFeatures]) -> TextFeatures:
        """Features for ``prompts`` (in order, duplicates allowed), encoding only the ones not cached.

        ``compute_fn(missing)`` is called at most once, with the distinct uncached prompts in
        first-seen order, and must return ``TextFeatures`` with one row per prompt it was given.
        """
        if isinstance(prompts, str):
            raise TypeError("get_or_compute expects a list of prompts, got a single string")
        if not prompts:
            raise ValueError("get_or_compute needs at least one prompt")
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with self._lock:
            for p in dict.fromkeys(prompts):
                entry = self._entries.get(p)
                if entry is not None:
                    self._entries.move_to_end(p)
                    found[p] = entry
            self.hits += len(found)
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            computed = compute_fn(missing)
            if len(computed) != len(missing) or computed.mask.shape[0] != len(missing):
                raise ValueError(f"compute_fn returned {len(computed)} rows for {len(missing)} prompts")
            # Clone each row so that a cached entry does not keep its whole batch alive.
            new = {
                p: (computed.features[i].detach().clone(), computed.mask[i].clone()) for i, p in enumerate(missing)
            }
            found.update(new)
            with self._lock:
                self.misses += len(missing)
                for p, entry in new.items():
                    self._entries[p] = entry
                    self._entries.move_to_end(p)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return TextFeatures(
            features=torch.stack([found[p][0] for p in prompts]),
            mask=torch.stack([found[p][1] for p in prompts]),
        )
