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


class FrameStaging:
    """A reusable host buffer the uint8 frames of a step are staged in before their upload.

    On CUDA the buffer is pinned (page-locked), so the uploads are DMA copies that do not block
    the host (``non_blocking``). The buffer grows to the largest step seen and is reused; before
    it is overwritten, the host waits for the previous step's uploads from it (a CUDA event).
    Owned by whoever steps the engine (one per ``StreamingEngine``): two steps never share one.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._uploaded = None  # torch.cuda.Event recorded after the last uploads from the buffer

    @property
    def capacity(self) -> int:
        """Bytes the buffer holds now."""
        return self._buffer.numel()

    def upload(self, frames: list[np.ndarray]) -> list[torch.Tensor]:
        """Each frame ``[H, W, 3]`` as a uint8 ``[1, H, W, 3]`` tensor on the device, through the buffer."""
        sizes = [f.size for f in frames]
        total = sum(sizes)
        if self._uploaded is not None:
            self._uploaded.synchronize()  # the previous uploads may still read the buffer
        if total > self.capacity:
            self._buffer = torch.empty(total, dtype=torch.uint8, pin_memory=self.pinned)
        out, start = [], 0
        for frame, size in zip(frames, sizes, strict=True):
            view = self._buffer[start:start + size].view(1, *frame.shape)
            np.copyto(view.numpy(), frame)  # frames from the object store are read-only: only read here
            # copy=True: on the CPU a result must not alias the buffer the next step overwrites
            out.append(view.to(self.device, non_blocking=self.pinned, copy=True))
            start += size
        if self.pinned:
            self._uploaded = torch.cuda.Event()
            self._uploaded.record()
        return out


def to_model_input(
    frames: list[np.ndarray] | torch.Tensor,
    image_size: int,
    device: torch.device | str,
    dtype: torch.dtype,
    staging: FrameStaging | None = None,
) -> torch.Tensor:
    """Resize frames to ``image_size``², scale to [0, 1] and normalise: ``[B, 3, S, S]``.

    Frames are uint8 ``[H, W, 3]`` arrays (sizes may differ) or a uint8 tensor ``[B, H, W, 3]``.
    The work happens on ``device`` so a GPU engine never resizes on the CPU; the resize runs
    in fp32 (antialiased bilinear, as the reference processor does) before the cast.
    ``staging`` (CUDA only; ignored on the CPU, where there is no upload) uploads array frames
    through its pinned buffer without blocking the host.
    """
    if isinstance(frames, torch.Tensor):
        batch = [frames.to(device)]
    elif staging is not None and torch.device(device).type == "cuda" and _all_frames(frames):
        batch = staging.upload(frames)
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


def _all_frames(frames: list[np.ndarray]) -> bool:
    """Whether every item is a uint8 ``[H, W, 3]`` array (anything else takes the checking path)."""
    return all(isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[-1] == 3 for f in frames)
