"""Sine/cosine position encodings (DETR style) for feature grids, points, boxes and time.

The one place these encodings are computed. :class:`SinePositionEncoding` serves every FPN
level of both vision necks (``fpn.FPNNeck``), the tracker's memory encoder and the memory
conditioning that reads its memories (one instance, on ``MemoryEncoder.position_encoding``), the
geometry encoder's box centres and the DETR decoder's box queries; :func:`sine_encoding_1d` the
tracker's object-pointer offsets. All arithmetic happens in fp32 and the result is cast at the
end: the angles reach ``2*pi`` and bf16 keeps only ~3 significant digits, so computing the sines
in bf16 would visibly shift positions.

Channel layout (matches the transformers/official checkpoints' consumers): each
coordinate gives ``num_pos_feats`` channels, interleaved ``[sin(c/t0), cos(c/t0),
sin(c/t1), cos(c/t1), ...]`` with ``t_j = temperature ** (2j / num_pos_feats)``;
a grid encoding stacks the y channels before the x channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_NORMALIZE_EPS = 1e-6


def _sine_cosine(coords: Tensor, num_pos_feats: int, temperature: float) -> Tensor:
    """``coords [...]`` (fp32) -> ``[..., num_pos_feats]`` interleaved sin/cos features."""
    # Pairs of channels share one frequency, so only the even ones are computed.
    pair_index = torch.arange(num_pos_feats // 2, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * pair_index / num_pos_feats)
    angles = coords[..., None] / dim_t
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


class SinePositionEncoding(nn.Module):
    """Parameter-free sine position encoding; holds only its hyper-parameters.

    ``normalize=True`` maps grid coordinates to ``(0, scale]`` (grid positions are
    1-based), ``normalize=False`` uses raw 1-based indices. Point and box coordinates
    (``encode_xy``/``encode_boxes``) are expected in ``[0, 1]`` and are always multiplied
    by ``scale``, whatever ``normalize`` says, as the reference models do.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("a scale only makes sense with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        # grids are constants of (size, device, dtype): computed once, not every frame
        self._grids: dict[tuple, Tensor] = {}

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}"

    def _axis(self, length: int, device: torch.device | str | None) -> Tensor:
        """Encoding of positions ``1..length`` along one axis: ``[length, num_pos_feats]`` fp32."""
        pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        if self.normalize:
            pos = pos / (pos[-1:] + _NORMALIZE_EPS) * self.scale
        return _sine_cosine(pos, self.num_pos_feats, self.temperature)

    def forward(
        self,
        height: int,
        width: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 1,
    ) -> Tensor:
        """Encoding of an ``height x width`` grid: ``[batch_size, 2 * num_pos_feats, height, width]``.

        The encoding is separable (y channels depend on the row only, x channels on the
        column only), so sines are taken on two small tables and then broadcast; the
        batch dimension is an expanded view (no memory per image). Call ``.contiguous()``
        before writing into it.
        """
        key = (height, width, str(torch.device(device) if device is not None else "cpu"), dtype)
        grid = self._grids.get(key)
        if grid is None:
            # a plain tensor even when called under inference mode, so that later autograd use is fine
            with torch.inference_mode(False), torch.no_grad():
                f = self.num_pos_feats
                pos_y = self._axis(height, device).to(dtype).t()[:, :, None].expand(f, height, width)
                pos_x = self._axis(width, device).to(dtype).t()[:, None, :].expand(f, height, width)
                grid = torch.cat((pos_y, pos_x), dim=0)
            if grid.device.type != "meta":
                self._grids[key] = grid
        return grid[None].expand(batch_size, -1, -1, -1)

    def encode_xy(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Encode point coordinates (same shape, any) -> ``(pos_x, pos_y)``, each ``[..., num_pos_feats]``."""
        pos_x = _sine_cosine(x.float() * self.scale, self.num_pos_feats, self.temperature)
        pos_y = _sine_cosine(y.float() * self.scale, self.num_pos_feats, self.temperature)
        return pos_x.to(x.dtype), pos_y.to(y.dtype)

    def encode_boxes(self, boxes: Tensor) -> Tensor:
        """Encode ``[..., 4]`` boxes ``(cx, cy, w, h)`` -> ``[..., 4 * num_pos_feats]`` ordered y, x, w, h."""
        if boxes.shape[-1] != 4:
            raise ValueError(f"boxes must end in 4 coordinates (cx, cy, w, h), got shape {tuple(boxes.shape)}")
        enc = _sine_cosine(boxes.float() * self.scale, self.num_pos_feats, self.temperature)  # [..., 4, F]
        cx, cy, w, h = enc.unbind(-2)
        return torch.cat((cy, cx, w, h), dim=-1).to(boxes.dtype)


def sine_encoding_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``positions [...]`` -> ``[..., dim]``: all sines first, then all cosines (SAM 2's 1-D layout).

    Unlike the interleaved layout above, frequency ``t_(i // 2)`` (with ``dim / 2`` in place of
    ``num_pos_feats``) appears twice in a row within each half; the tracker's pointer projection
    was trained on exactly this layout. Computed and returned in fp32.
    """
    half = dim // 2
    # each frequency twice in a row: the SAM 2 layout the checkpoint expects
    pair_index = torch.arange(half, dtype=torch.float32, device=positions.device).div(2, rounding_mode="floor")
    angles = positions.float()[..., None] / temperature ** (2 * pair_index / half)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)
