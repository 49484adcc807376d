"""The whole SAM 3 model, and loading it from a checkpoint.

``Sam3Model``'s parameter names are the canonical checkpoint key space (the transformers
format: ``detector_model.*``, ``tracker_model.*``, ``tracker_neck.*``), so a transformers-format
``model.safetensors`` loads as it is and the official ``sam3.pt`` after a key conversion.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sam3_runtime.checkpoint import (
    CheckpointError,
    KeyReport,
    check_state_dict,
    load_state_dict,
    load_strict,
    read_key_list_tsv,
    resolve_checkpoint,
)
from sam3_runtime.config import Sam3Config
from sam3_runtime.device import resolve_device, resolve_dtype
from sam3_runtime.modeling.detector import Sam3Detector
from sam3_runtime.modeling.fpn import FPNNeck
from sam3_runtime.modeling.text_encoder import TextEmbeddingCache, TextFeatures
from sam3_runtime.modeling.tracker import TrackerModel
from sam3_runtime.tokenizer import Sam3Tokenizer, build_clip_tokenizer

logger = logging.getLogger(__name__)

# Marks checkpoints written by ``write_random_checkpoint`` so that every tool can say so plainly.
RANDOM_WEIGHTS_KEY = "sam3_stream_random_weights"
REAL_CHECKPOINT_HINT = ("to use SAM 3 itself, accept the licence of facebook/sam3 on the Hugging Face hub, "
                        "set HF_TOKEN and use the checkpoint facebook/sam3")


class Sam3Model(nn.Module):
    """Detector + tracker, sharing the detector's ViT; the tracker reads it through its own neck."""

    def __init__(self, config: Sam3Config):
        super().__init__()
        self.config = config
        self.detector_model = Sam3Detector(config.detector)
        self.tracker_model = TrackerModel(config.tracker)
        self.tracker_neck = FPNNeck(config.detector.vision_config)


@dataclass
class LoadedModel:
    """A model ready to run: weights on the device, its tokenizer and a per-prompt text cache."""

    model: Sam3Model
    config: Sam3Config
    tokenizer: Sam3Tokenizer
    device: torch.device
    dtype: torch.dtype
    model_id: str
    random_weights: bool = False
    text_cache: TextEmbeddingCache = field(default_factory=lambda: TextEmbeddingCache(max_entries=4096))

    @torch.inference_mode()
    def text_features(self, prompts: list[str]) -> TextFeatures:
        """Projected text tokens ``[P, L, d]`` and their validity mask ``[P, L]``, each prompt encoded once."""

        def compute(missing: list[str]):
            ids, mask = self.tokenizer.encode(missing)
            return self.model.detector_model.encode_text(ids.to(self.device), mask.to(self.device))

        return self.text_cache.get_or_compute(prompts, compute)


def load_model(spec: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
               token: str | None = None) -> LoadedModel:
    """Load a checkpoint (hub repo id, local directory, ``.pt`` or ``.safetensors`` file), strictly."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    resolved = resolve_checkpoint(spec, token=token)
    config = _read_config(resolved.config_path)
    random_weights = bool(resolved.config_path and json.loads(Path(resolved.config_path).read_text()).get(RANDOM_WEIGHTS_KEY))
    if random_weights:
        logger.warning("%s has random weights: its masks mean nothing (%s)", spec, REAL_CHECKPOINT_HINT)
    if resolved.tokenizer_path is None:
        raise CheckpointError(
            f"{spec}: no tokenizer.json found next to the weights; use a checkpoint directory that holds "
            "config.json, model.safetensors and tokenizer.json (as facebook/sam3 does)"
        )
    state = load_state_dict(resolved)
    with torch.device("meta"):
        model = Sam3Model(config)
    load_strict(model, state)  # assigns the loaded tensors in place of the meta ones
    model = model.to(device=dev, dtype=dt).eval()
    tokenizer = Sam3Tokenizer.from_file(resolved.tokenizer_path, context_length=config.detector.text_config.max_position_embeddings)
    logger.info("loaded %s on %s (%s)", resolved.model_id, dev, str(dt).removeprefix("torch."))
    return LoadedModel(model=model, config=config, tokenizer=tokenizer, device=dev, dtype=dt, model_id=resolved.model_id,
                       random_weights=random_weights)


def _read_config(path: Path | None) -> Sam3Config:
    if path is None:
        # The official sam3.pt carries no config: it is the published full-size model.
        return Sam3Config.full()
    try:
        return Sam3Config.from_hf_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config.json ({e})") from e


def check_checkpoint(spec: str) -> KeyReport:
    """Map a checkpoint's (or a ``.tsv`` key list's) keys onto the model, without loading weights.

    The model is built on the meta device from the checkpoint's ``config.json`` when it has
    one, else at full SAM 3 size (the official ``sam3.pt`` and the reference key lists).
    """
    if spec.endswith(".tsv"):
        config, actual = Sam3Config.full(), read_key_list_tsv(spec)
    else:
        resolved = resolve_checkpoint(spec)
        config = _read_config(resolved.config_path)
        actual = {k: tuple(v.shape) for k, v in load_state_dict(resolved, meta=True).items()}
    with torch.device("meta"):
        model = Sam3Model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return check_state_dict(expected, actual)


def write_random_checkpoint(out_dir: str | Path, seed: int = 0, config: Sam3Config | None = None) -> Path:
    """A transformers-format checkpoint directory with random weights and a small CLIP-style tokenizer.

    Used by the demo and the tests: nothing here can download the real weights. The tokenizer
    is trained on a small built-in word list, so ``config`` (default: the tiny preset) must
    have a small text vocabulary. Every float tensor is random and follows from ``seed`` alone
    (see ``_randomize_constant_tensors``): no bias, embedding or norm is left at its constant init.
    """
    from safetensors.torch import save_file

    config = config or Sam3Config.tiny()
    with torch.random.fork_rng(devices=[]):  # seeded layer init without touching the caller's generator
        torch.manual_seed(seed)
        model = Sam3Model(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _randomize_constant_tensors(state, torch.Generator().manual_seed(seed))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**config.to_hf_dict(), RANDOM_WEIGHTS_KEY: True}, indent=2))
    text = config.detector.text_config
    build_clip_tokenizer(text.vocab_size).save(str(out / "tokenizer.json"))
    return out


# Spread of the values drawn for tensors that layer init sets to a constant: the std SAM 3 itself
# initialises embeddings with; small enough that the tiny demo model still behaves like a model.
_RANDOM_FILL_STD = 0.02


def _randomize_constant_tensors(state: dict[str, torch.Tensor], gen: torch.Generator) -> None:
    """Redraw, in place, every float tensor that layer init leaves constant: biases and embeddings
    at zero, norm weights at one, layer scales at 1e-6. A path that reads such a tensor computes
    the same thing whatever the mapping or the arithmetic around it, so a random checkpoint would
    hide its bugs. Norm weights go near 1, the others small around 0; tensors already drawn at
    random by their layer's init keep their values.
    """
    for key in sorted(state):  # a fixed order: the same seed gives the same checkpoint
        t = state[key]
        if not t.is_floating_point() or t.numel() == 0:
            continue
        first = t.flatten()[0]
        if t.numel() > 1 and not bool((t == first).all()):
            continue
        if t.numel() == 1 and first != 0:  # a lone bias drawn by its layer's init
            continue
        noise = _RANDOM_FILL_STD * torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)
        state[key] = (noise + 1.0) if bool(first == 1) else noise
