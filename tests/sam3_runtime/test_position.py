"""The shared sine position encoding against the formula, written out here in float64."""

from __future__ import annotations

import math

import pytest
import torch

from sam3_runtime.modeling.position import SinePositionEncoding, sine_encoding_1d

ATOL = 2e-5  # fp32 sines of angles up to a few hundred radians


def _expected_channels(coord: float, num_pos_feats: int, temperature: float) -> list[float]:
    """Interleaved [sin(c/t0), cos(c/t0), sin(c/t1), ...], t_j = temperature ** (2j / num_pos_feats)."""
    out = []
    for channel in range(num_pos_feats):
        t = temperature ** (2 * (channel // 2) / num_pos_feats)
        out.append(math.sin(coord / t) if channel % 2 == 0 else math.cos(coord / t))
    return out


def _expected_grid(num_pos_feats: int, height: int, width: int, normalize: bool, temperature: float) -> torch.Tensor:
    grid = torch.empty(2 * num_pos_feats, height, width, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            y, x = row + 1.0, col + 1.0  # grid positions are 1-based
            if normalize:
                y, x = y / (height + 1e-6) * 2 * math.pi, x / (width + 1e-6) * 2 * math.pi
            grid[:num_pos_feats, row, col] = torch.tensor(_expected_channels(y, num_pos_feats, temperature))
            grid[num_pos_feats:, row, col] = torch.tensor(_expected_channels(x, num_pos_feats, temperature))
    return grid


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("num_pos_feats", "height", "width", "temperature"),
                         [(8, 5, 7, 10000.0), (16, 1, 3, 10000.0), (32, 9, 4, 20.0)])
def test_grid_matches_the_formula(num_pos_feats, height, width, temperature, normalize):
    enc = SinePositionEncoding(num_pos_feats, temperature=temperature, normalize=normalize)
    grid = enc(height, width, batch_size=2)
    assert grid.shape == (2, 2 * num_pos_feats, height, width) and grid.dtype == torch.float32
    expected = _expected_grid(num_pos_feats, height, width, normalize, temperature)
    for image in grid:
        torch.testing.assert_close(image.double(), expected, rtol=0, atol=ATOL)


def test_grid_in_low_precision_is_the_fp32_grid_rounded_once():
    enc = SinePositionEncoding(16)
    fp32 = enc(12, 10)
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(enc(12, 10, dtype=dtype), fp32.to(dtype))


def test_points_and_boxes_match_the_formula():
    g = torch.Generator().manual_seed(0)
    num_pos_feats, temperature = 12, 10000.0
    boxes = torch.rand(3, 4, generator=g)
    # normalize=False still scales points and boxes by 2*pi, as the reference models do
    for normalize in (True, False):
        enc = SinePositionEncoding(num_pos_feats, temperature=temperature, normalize=normalize)
        pos_x, pos_y = enc.encode_xy(boxes[:, 0], boxes[:, 1])
        encoded = enc.encode_boxes(boxes)
        assert pos_x.shape == (3, num_pos_feats) and encoded.shape == (3, 4 * num_pos_feats)
        for i, (cx, cy, w, h) in enumerate(boxes.double().tolist()):
            per_coord = {name: _expected_channels(v * 2 * math.pi, num_pos_feats, temperature)
                         for name, v in (("cx", cx), ("cy", cy), ("w", w), ("h", h))}
            want_box = torch.tensor(per_coord["cy"] + per_coord["cx"] + per_coord["w"] + per_coord["h"])
            torch.testing.assert_close(encoded[i].double(), want_box.double(), rtol=0, atol=ATOL)
            torch.testing.assert_close(pos_x[i].double(), torch.tensor(per_coord["cx"]).double(), rtol=0, atol=ATOL)
            torch.testing.assert_close(pos_y[i].double(), torch.tensor(per_coord["cy"]).double(), rtol=0, atol=ATOL)


def test_one_dimensional_encoding_matches_the_formula():
    positions = torch.tensor([0.0, 0.25, 1.0, 3.5])
    dim, temperature = 10, 10000.0
    half = dim // 2
    out = sine_encoding_1d(positions, dim, temperature)
    assert out.shape == (4, dim)
    for i, p in enumerate(positions.double().tolist()):
        freqs = [temperature ** (2 * (k // 2) / half) for k in range(half)]
        want = [math.sin(p / t) for t in freqs] + [math.cos(p / t) for t in freqs]
        torch.testing.assert_close(out[i].double(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=ATOL)


def test_grid_cache_belongs_to_its_instance_and_is_keyed_by_size_and_dtype():
    first, second = SinePositionEncoding(8), SinePositionEncoding(8)
    a = first(4, 6)
    assert first(4, 6).data_ptr() == a.data_ptr()
    assert first(4, 6, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert first(6, 4).shape == (1, 16, 6, 4)
    assert second(4, 6).data_ptr() != a.data_ptr()  # no cache shared between instances
    assert torch.equal(second(4, 6), a)


def test_rejects_odd_feature_counts_and_misshaped_boxes():
    with pytest.raises(ValueError, match="even"):
        SinePositionEncoding(7)
    with pytest.raises(ValueError, match="4 coordinates"):
        SinePositionEncoding(8).encode_boxes(torch.zeros(2, 3))
