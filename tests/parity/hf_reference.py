"""The reference implementation: Hugging Face transformers' SAM 3, built on our configs.

transformers is a test-only dependency. Every parity test builds the reference model from
the same ``Sam3Config`` the runtime uses, with seeded random weights, and compares outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sam3_runtime.config import Sam3Config

# The published checkpoints' key lists (names, shapes, dtypes), kept with the tests.
DATA_DIR = Path(__file__).parents[1] / "data"
HF_TSV = DATA_DIR / "sam3_hf_video_state_dict.tsv"
OFFICIAL_TSV = DATA_DIR / "sam3_official_video_state_dict.tsv"


def reference_shapes(prefix: str, tsv: Path = HF_TSV) -> dict[str, tuple[int, ...]]:
    """Shapes of the published checkpoint's keys under ``prefix``, with the prefix stripped."""
    shapes = {}
    for line in tsv.read_text().splitlines():
        if line.startswith("#") or not line.startswith(prefix):
            continue
        key, shape, _ = line.split("\t")
        shapes[key[len(prefix):]] = tuple(int(s) for s in shape.split("x"))
    assert shapes, f"no reference key starts with {prefix!r}"
    return shapes


def hf_video_config(config: Sam3Config):
    from transformers import Sam3VideoConfig

    d = config.to_hf_dict()
    d.pop("model_type")
    d.pop("architectures")
    return Sam3VideoConfig(**d)


def hf_video_model(config: Sam3Config, seed: int = 0, scale: float = 0.1):
    """A randomly initialised ``transformers.Sam3VideoModel`` in eval mode, on torch's default device
    in its default dtype: CPU float32, or the test device inside the parity tests (tests/devices.py).

    ``scale`` is the standard deviation of the random weights: 0.1 keeps tiny models'
    activations lively; deep full-size models need about 0.02 to stay well conditioned.
    The weights are drawn on the CPU in float32, so they are the same on every device (up to rounding).
    """
    from transformers import Sam3VideoModel

    torch.manual_seed(seed)
    model = Sam3VideoModel(hf_video_config(config)).eval()
    randomize_weights(model, seed, scale)
    return model.to(device=torch.get_default_device(), dtype=torch.get_default_dtype())


def randomize_weights(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Re-draw every parameter and buffer-like weight so that no path hides behind a zero init.

    transformers zero-initialises some layers (biases, layer scales, some embeddings);
    parity on zeros proves little, so every float parameter gets small random values.
    """
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            # drawn in float32 on the CPU whatever the model's device and dtype, then copied over
            noise = scale * torch.randn(p.shape, generator=g, device="cpu", dtype=torch.float32)
            p.copy_(1.0 + noise if name.endswith("weight") and "norm" in name else noise)


def hf_detector_state_dict(hf_video) -> dict[str, torch.Tensor]:
    """Detector weights under the names they carry in a saved checkpoint (``detector_model.`` stripped)."""
    return {k: v.clone() for k, v in hf_video.detector_model.state_dict().items()}


def reference_roi_align(inputs, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision.ops.roi_align, one bilinear sample at a time (inputs [B, C, H, W], boxes: list of [K_b, 4])."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    ph_n, pw_n = output_size
    _, channels, height, width = inputs.shape
    outputs = []
    for b, image_boxes in enumerate(boxes):
        for box in image_boxes.tolist():
            offset = 0.5 if aligned else 0.0
            x0, y0, x1, y1 = (v * spatial_scale - offset for v in box)
            roi_w, roi_h = x1 - x0, y1 - y0
            if not aligned:
                roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
            bin_h, bin_w = roi_h / ph_n, roi_w / pw_n
            grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph_n)
            grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw_n)
            count = max(grid_h * grid_w, 1)
            out = torch.zeros(channels, ph_n, pw_n, dtype=torch.float64)
            for ph in range(ph_n):
                for pw in range(pw_n):
                    acc = torch.zeros(channels, dtype=torch.float64)
                    for iy in range(grid_h):
                        y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = x0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            acc += _bilinear(inputs[b], y, x, height, width)
                    out[:, ph, pw] = acc / count
            outputs.append(out)
    if not outputs:
        return inputs.new_zeros(0, channels, ph_n, pw_n)
    return torch.stack(outputs).to(inputs.dtype)


def _bilinear(image, y, x, height, width):
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(image.shape[0], dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    img = image.double()
    return (
        hy * hx * img[:, y_low, x_low]
        + hy * lx * img[:, y_low, x_high]
        + ly * hx * img[:, y_high, x_low]
        + ly * lx * img[:, y_high, x_high]
    )
