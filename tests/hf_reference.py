"""The reference implementation: Hugging Face transformers' SAM 3, built on our configs.

transformers is a test-only dependency. Every parity test builds the reference model from
the same ``Sam3Config`` the runtime uses, with seeded random weights, and compares outputs.
"""

from __future__ import annotations

import torch

from sam3_runtime.config import Sam3Config


def hf_video_config(config: Sam3Config):
    from transformers import Sam3VideoConfig

    d = config.to_hf_dict()
    d.pop("model_type")
    d.pop("architectures")
    return Sam3VideoConfig(**d)


def hf_video_model(config: Sam3Config, seed: int = 0):
    """A randomly initialised ``transformers.Sam3VideoModel`` in eval mode (fp32, CPU)."""
    from transformers import Sam3VideoModel

    torch.manual_seed(seed)
    model = Sam3VideoModel(hf_video_config(config)).eval()
    _randomize(model, seed)
    return model


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter and buffer-like weight so that no path hides behind a zero init.

    transformers zero-initialises some layers (biases, layer scales, some embeddings);
    parity on zeros proves little, so every float parameter gets small random values.
    """
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if name.endswith("weight") and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def hf_detector_state_dict(hf_video) -> dict[str, torch.Tensor]:
    """Detector weights under the names they carry in a saved checkpoint (``detector_model.`` stripped)."""
    return {k: v.clone() for k, v in hf_video.detector_model.state_dict().items()}
