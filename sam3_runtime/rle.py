"""Bit-packed masks and COCO RLE with numpy only.

Stream-side code (record building, watchlist rules) reads masks through this module; it must not
import torch, so a stream actor's process stays small and starts fast. The engine packs masks on
the device with exactly :func:`pack_mask`'s layout (``np.packbits`` of the row-major flattened
``[H, W]`` mask, big-endian bits, zero-padded to a whole byte), so the host unpacks with numpy.

RLE goes through pycocotools so every consumer that decodes COCO masks reads ours.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from pycocotools import mask as mask_utils


class RLE(TypedDict):
    size: list[int]
    counts: str


def packed_size(size: tuple[int, int]) -> int:
    """Bytes of one packed ``(H, W)`` mask."""
    return (size[0] * size[1] + 7) // 8


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """uint8 ``[ceil(H*W/8)]``: a boolean ``[H, W]`` mask, 8 pixels per byte."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1))


def unpack_mask(packed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The boolean ``[H, W]`` mask of :func:`pack_mask`'s bytes."""
    h, w = size
    if packed.shape != (packed_size(size),):
        raise ValueError(f"a packed {h}x{w} mask has {packed_size(size)} bytes, got shape {packed.shape}")
    return np.unpackbits(packed, count=h * w).reshape(h, w).view(bool)


def encode_rle(masks: np.ndarray) -> list[RLE]:
    """COCO compressed RLE of boolean masks ``[N, H, W]`` (``counts`` as a str, JSON-ready)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape [N, H, W], got {tuple(masks.shape)}")
    if len(masks) == 0:
        return []
    # pycocotools wants Fortran order uint8 [H, W, N]
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in encoded]


def packed_rle(packed: np.ndarray, size: tuple[int, int]) -> RLE:
    """COCO compressed RLE of one packed mask, byte for byte what :func:`encode_rle` gives its unpacked mask."""
    return encode_rle(unpack_mask(packed, size)[None])[0]


def decode_rle(rles: list[RLE]) -> np.ndarray:
    """Boolean masks ``[N, H, W]`` from COCO RLEs (compressed string or bytes counts)."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    coco = [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
            for r in rles]
    return mask_utils.decode(coco).transpose(2, 0, 1).astype(bool)
