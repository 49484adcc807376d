"""Frame preprocessing vs independent references of the SAM 3 processor's resize and normalisation.

The reference processors (the official ``Sam3Processor`` and transformers' ``Sam3ImageProcessor``)
resize the uint8 image to ``S x S`` (no aspect ratio kept, no padding) with torchvision's
antialiased bilinear resize, then scale by 1/255 and normalise with mean = std = 0.5.
torchvision cannot be installed beside this torch, so two independent implementations of that
filter stand in for it:

* a float64 numpy implementation of the antialiased triangle filter (separable; each output
  pixel averages the input pixels under a triangle whose support widens with the downscale
  factor), which is what torchvision's and Pillow's antialiased bilinear compute;
* Pillow's ``Image.resize(..., BILINEAR)``, the filter torchvision's antialias mode mimics.

Nothing here goes through ``F.interpolate``: both references only see the uint8 pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_runtime.preprocess import to_model_input

GREY_LEVEL = 2.0 / 255.0  # one uint8 step after (x / 255 - 0.5) / 0.5


def triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` float64 weights of the antialiased bilinear (triangle) filter along one axis."""
    scale = n_in / n_out
    # downscaling widens the triangle to cover every input pixel that maps into the output one
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale  # in input pixel units, pixel j spanning [j, j + 1)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((taps + 0.5 - centre) / support), 0.0, None)
        weights[i, lo:hi] = w / w.sum()
    return weights


def reference_float64(image: np.ndarray, size: int) -> np.ndarray:
    """``[3, size, size]`` float64: antialiased bilinear resize of the uint8 RGB image, then normalised."""
    pixels = image.astype(np.float64) / 255.0
    rows, cols = triangle_weights(image.shape[0], size), triangle_weights(image.shape[1], size)
    resized = np.stack([rows @ pixels[..., c] @ cols.T for c in range(3)])
    return (resized - 0.5) / 0.5


def reference_pillow(image: np.ndarray, size: int) -> np.ndarray:
    """``[3, size, size]`` float64: Pillow's bilinear resize (uint8 result), then normalised."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return (resized.transpose(2, 0, 1).astype(np.float64) / 255.0 - 0.5) / 0.5


def float32_tolerance(image: np.ndarray, size: int) -> float:
    """How far an fp32 resize may honestly sit from the float64 one, in normalised units.

    The resize computes its scale and sampling positions in fp32, so positions are off by
    about ``extent * 2**-24`` pixels; on a noise image (neighbours differing by up to 1) that
    moves an output by as much, plus fp32 accumulation (~1e-6), and normalising doubles it.
    Measured max differences: 8e-6 (37x53 -> 112), 1.2e-5 (241x97 -> 112), 1.4e-4
    (720x1280 -> 1008); the bound below grows with the extent like the error and is 3 - 7x
    each of them.
    """
    extent = max(*image.shape[:2], size)
    return 3.0 * (2.0 * extent * 2.0**-24 + 1e-6)


def noise_image(height: int, width: int, seed: int) -> np.ndarray:
    """Uniform noise: every pixel differs from its neighbours, so any misplaced weight shows."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# (height, width, model size): odd and non-square, down- and upscaling, one axis each way, and
# degenerate 1-pixel images; the last one is a 720p camera frame at the real model size
CASES = [
    (37, 53, 112),
    (241, 97, 112),
    (97, 241, 56),
    (200, 150, 57),
    (1, 1, 112),
    (1, 200, 112),
    (300, 1, 112),
    (2, 3, 112),
    (112, 112, 112),
    (720, 1280, 1008),
]


@pytest.mark.parametrize(("height", "width", "size"), CASES)
def test_matches_float64_antialiased_bilinear(height, width, size):
    image = noise_image(height, width, seed=height * 1000 + width)
    got = to_model_input([image], size, "cpu", torch.float32)
    assert got.shape == (1, 3, size, size) and got.dtype == torch.float32
    ref = reference_float64(image, size)
    tol = float32_tolerance(image, size)
    diff = np.abs(got[0].double().numpy() - ref).max()
    assert diff <= tol, f"{height}x{width} -> {size}: max difference {diff:.2e} > {tol:.2e}"


@pytest.mark.parametrize(("height", "width", "size"), CASES)
def test_matches_pillow_bilinear(height, width, size):
    """Pillow rounds to uint8 after each of its two passes; ours stays in float.

    So a pixel may differ by up to one grey level (half a level per rounding), and the
    differences average about 0.3 of a level (measured 0.23 - 0.31 on these cases).
    """
    image = noise_image(height, width, seed=height * 1000 + width + 1)
    got = to_model_input([image], size, "cpu", torch.float32)[0].double().numpy()
    pil = reference_pillow(image, size)
    diff = np.abs(got - pil)
    assert diff.max() <= GREY_LEVEL + float32_tolerance(image, size), f"max {diff.max() / GREY_LEVEL:.3f} grey levels"
    assert diff.mean() <= 0.35 * GREY_LEVEL, f"mean {diff.mean() / GREY_LEVEL:.3f} grey levels"
    # the float64 reference agrees with Pillow within the same rounding: it is Pillow's filter
    assert np.abs(reference_float64(image, size) - pil).max() <= GREY_LEVEL + 1e-9


def test_layout_range_and_channel_order():
    """``[B, 3, S, S]``, RGB in the order given, (x / 255 - 0.5) / 0.5: black -1, white +1."""
    size = 24
    frames = []
    for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255), (51, 128, 204)):
        frame = np.empty((13, 29, 3), dtype=np.uint8)
        frame[:] = colour
        frames.append(frame)
    got = to_model_input(frames, size, "cpu", torch.float32)
    assert got.shape == (6, 3, size, size) and got.dtype == torch.float32
    expected = torch.tensor(
        [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [-1, -1, -1], [1, 1, 1], [51 / 127.5 - 1, 128 / 127.5 - 1, 204 / 127.5 - 1]],
        dtype=torch.float32,
    )
    # a uniform image stays uniform through any normalised filter: exact up to fp32 rounding
    torch.testing.assert_close(got, expected[:, :, None, None].expand_as(got), rtol=0, atol=1e-6)


def test_rows_stay_rows_and_columns_stay_columns():
    """A bright strip along the top (a quarter of the height, two thirds of the width) stays there."""
    image = np.zeros((40, 90, 3), dtype=np.uint8)
    image[:10, :60] = 255
    got = to_model_input([image], 32, "cpu", torch.float32)[0]
    # it covers output rows 0 - 7 and columns 0 - 21; the filter blurs a pixel or two around that
    inside, below, right = got[:, :6, :19], got[:, 10:, :], got[:, :, 24:]
    assert inside.min() > 0.9999 and below.max() < -0.9999 and right.max() < -0.9999


def test_frames_of_different_sizes_batch_and_tensor_input_agree():
    small, large = noise_image(37, 53, seed=1), noise_image(241, 97, seed=2)
    batch = to_model_input([small, large], 56, "cpu", torch.float32)
    assert batch.shape == (2, 3, 56, 56)
    for i, image in enumerate((small, large)):
        torch.testing.assert_close(batch[i], to_model_input([image], 56, "cpu", torch.float32)[0], rtol=0, atol=0)
    # a [B, H, W, 3] tensor of same-sized frames is the same as the list; frames may be read-only
    pair = [noise_image(37, 53, seed=3), noise_image(37, 53, seed=4)]
    pair[1].flags.writeable = False
    from_tensor = to_model_input(torch.from_numpy(np.stack(pair)), 56, "cpu", torch.float32)
    torch.testing.assert_close(from_tensor, to_model_input(pair, 56, "cpu", torch.float32), rtol=0, atol=0)


def test_bfloat16_output_is_the_rounded_float32_result():
    image = noise_image(241, 97, seed=5)
    got = to_model_input([image], 56, "cpu", torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, to_model_input([image], 56, "cpu", torch.float32).to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize(
    "frames",
    [
        [np.zeros((8, 8, 3), dtype=np.float32)],  # not uint8
        [np.zeros((8, 8, 4), dtype=np.uint8)],  # RGBA
        [np.zeros((8, 8), dtype=np.uint8)],  # grey
    ],
)
def test_rejects_frames_that_are_not_uint8_rgb(frames):
    with pytest.raises(ValueError, match="uint8 RGB"):
        to_model_input(frames, 16, "cpu", torch.float32)
