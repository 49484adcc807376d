"""Image input: decoding files and turning frames into the model's normalised square tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

# SAM 3 normalises pixels with mean = std = 0.5 after scaling to [0, 1].
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


class ImageReadError(ValueError):
    """An input image could not be read."""


def load_image(path: str | Path) -> np.ndarray:
    """An RGB ``uint8`` array ``[H, W, 3]`` from an image file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}); pass a PNG, JPEG or another format Pillow reads") from e


def to_model_input(
    frames: list[np.ndarray] | torch.Tensor,
    image_size: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Resize frames to ``image_size``², scale to [0, 1] and normalise: ``[B, 3, S, S]``.

    Frames are uint8 ``[H, W, 3]`` arrays (sizes may differ) or a uint8 tensor ``[B, H, W, 3]``.
    The work happens on ``device`` so a GPU engine never resizes on the CPU; the resize runs
    in fp32 (antialiased bilinear, as the reference processor does) before the cast.
    """
    if isinstance(frames, torch.Tensor):
        batch = [frames.to(device)]
    else:
        # frames shared through an object store arrive read-only; torch wants writable memory
        batch = [torch.from_numpy(np.ascontiguousarray(f) if f.flags.writeable else f.copy()).to(device)[None]
                 for f in frames]
    out = []
    for x in batch:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 RGB [H, W, 3]; got {x.dtype} {tuple(x.shape[1:])}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x)
    pixels = torch.cat(out) if len(out) > 1 else out[0]
    return ((pixels - PIXEL_MEAN) / PIXEL_STD).to(dtype)
