"""Parity of the vision encoder (ViT backbone, FPN necks, sine position encodings) with transformers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sam3_runtime.config import Sam3Config, ViTConfig
from sam3_runtime.modeling.fpn import FPNNeck, VisionEncoder
from sam3_runtime.modeling.position import SinePositionEncoding
from sam3_runtime.modeling.vit import ViTBackbone, window_partition, window_unpartition
from tests.parity.hf_reference import hf_video_model, randomize_weights, reference_shapes


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(scope="module")
def tiny() -> Sam3Config:
    return Sam3Config.tiny()


@pytest.fixture(scope="module")
def hf(tiny):
    return hf_video_model(tiny)


@pytest.fixture(scope="module")
def pixels(tiny) -> torch.Tensor:
    size = tiny.image_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def hf_vision_out(hf, pixels):
    with torch.no_grad():
        return hf.detector_model.vision_encoder(pixels)


@pytest.fixture(scope="module")
def encoder(tiny, hf) -> VisionEncoder:
    model = VisionEncoder(tiny.detector.vision_config).eval()
    model.load_state_dict(hf.detector_model.vision_encoder.state_dict(), strict=True)
    return model


def test_vision_encoder_matches_hf(encoder, pixels, hf_vision_out):
    with torch.no_grad():
        out = encoder(pixels)
    ref = hf_vision_out
    tokens = out.backbone_features.flatten(2).transpose(1, 2)  # -> [B, H*W, C] like transformers
    assert_close(tokens, ref.last_hidden_state)
    assert len(out.fpn_features) == len(ref.fpn_hidden_states) == 4
    for ours, theirs in zip(out.fpn_features, ref.fpn_hidden_states, strict=True):
        assert_close(ours, theirs)
    for ours, theirs in zip(out.fpn_position_encodings, ref.fpn_position_encoding, strict=True):
        assert_close(ours, theirs)
    # Finest level is 4x the 8x8 token grid.
    d = encoder.neck.fpn_layers[0].proj2.out_channels
    assert out.fpn_features[0].shape == (2, d, 32, 32)


def test_tracker_neck_matches_hf(tiny, hf, hf_vision_out):
    neck = FPNNeck(tiny.detector.vision_config).eval()
    neck.load_state_dict(hf.tracker_neck.state_dict(), strict=True)
    tokens = hf_vision_out.last_hidden_state
    b, n, c = tokens.shape
    side = math.isqrt(n)
    spatial = tokens.view(b, side, side, c).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref_feats, ref_pos = hf.tracker_neck(spatial)
        out = neck(spatial)
    for ours, theirs in zip(out.features, ref_feats, strict=True):
        assert_close(ours, theirs)
    for ours, theirs in zip(out.position_encodings, ref_pos, strict=True):
        assert_close(ours, theirs)
    # The detector and tracker necks hold different weights: the check above is not vacuous.
    det = hf_vision_out.fpn_hidden_states[0]
    assert not torch.allclose(out.features[0], det, atol=1e-3)


def test_neck_can_skip_the_coarsest_level(encoder, pixels):
    with torch.no_grad():
        full = encoder(pixels)
        three = encoder(pixels, num_levels=3)
    assert len(three.fpn_features) == len(three.fpn_position_encodings) == 3
    for a, b in zip(three.fpn_features, full.fpn_features[:3], strict=True):
        torch.testing.assert_close(a, b)


def _hf_vit(cfg: ViTConfig):
    from transformers import Sam3ViTConfig, Sam3ViTModel

    d = dataclasses.asdict(cfg)
    d["rope_parameters"] = {"rope_type": "axial", "rope_theta": d.pop("rope_theta")}
    d["global_attn_indexes"] = list(d["global_attn_indexes"])
    torch.manual_seed(0)
    model = Sam3ViTModel(Sam3ViTConfig(**d)).eval()
    randomize_weights(model, 0)
    return model


@pytest.mark.parametrize(
    ("window", "image_size", "window_ordered"),
    [
        (3, 112, False),  # 8x8 tokens, window 3: padded windows
        (4, 112, True),  # window tiles the grid: residual stream kept in window order
        (3, 126, True),  # 9x9 tokens: 4x4 pretrain position table tiled and cropped
    ],
)
def test_backbone_token_layouts_match_hf(window, image_size, window_ordered):
    cfg = ViTConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        image_size=image_size, window_size=window, global_attn_indexes=(1, 3), pretrain_image_size=56,
    )
    ref_model = _hf_vit(cfg)
    ours = ViTBackbone(cfg).eval()
    ours.load_state_dict(ref_model.state_dict(), strict=True)
    grid = image_size // cfg.patch_size
    assert ours.token_grid(2, grid, grid).window_ordered is window_ordered
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ref_model(x).last_hidden_state
        out = ours(x)
    assert out.shape == (2, 64, grid, grid)
    # Channels-last view of the tokens: consumers get [B, H, W, C] tokens without a copy.
    assert out.permute(0, 2, 3, 1).is_contiguous()
    assert_close(out.flatten(2).transpose(1, 2), ref)


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 8, 7, 5)
    windows = window_partition(x, 3)
    assert windows.shape == (2 * 3 * 3, 9, 5)
    # Padding is zeros, at the bottom/right edges: the last window of a row holds 2 real columns.
    assert torch.equal(windows[2].view(3, 3, 5)[:, 1:], torch.zeros(3, 2, 5))
    torch.testing.assert_close(window_unpartition(windows, 3, 2, 8, 7), x, rtol=0, atol=0)


def test_sine_position_encoding_matches_hf():
    from transformers.models.sam3.modeling_sam3 import Sam3SinePositionEmbedding

    g = torch.Generator().manual_seed(5)
    for normalize in (True, False):
        ours = SinePositionEncoding(16, normalize=normalize)
        ref = Sam3SinePositionEmbedding(num_position_features=16, normalize=normalize)
        expected = ref((3, 32, 6, 9), "cpu", torch.float32)
        assert_close(ours(6, 9, batch_size=3), expected)
    ours = SinePositionEncoding(16, normalize=False)
    ref = Sam3SinePositionEmbedding(num_position_features=16, normalize=False)
    x, y = torch.rand(10, generator=g), torch.rand(10, generator=g)
    for a, b in zip(ours.encode_xy(x, y), ref.encode_1d_positions(x, y), strict=True):
        assert_close(a, b)
    boxes = torch.rand(2, 5, 4, generator=g)
    assert_close(ours.encode_boxes(boxes), ref.encode_boxes(boxes))


@pytest.mark.parametrize(
    ("prefix", "build"),
    [
        ("detector_model.vision_encoder.", lambda cfg: VisionEncoder(cfg)),
        ("detector_model.vision_encoder.backbone.", lambda cfg: ViTBackbone(cfg.backbone_config)),
        ("tracker_neck.", lambda cfg: FPNNeck(cfg)),
    ],
)
def test_full_size_keys_and_shapes(prefix, build):
    expected = reference_shapes(prefix)
    with torch.device("meta"):
        model = build(Sam3Config.full().detector.vision_config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert list(model.buffers()) == []  # RoPE and position tables are never stored


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_smoke(tiny, encoder, pixels, dtype):
    model = VisionEncoder(tiny.detector.vision_config).eval()
    model.load_state_dict(encoder.state_dict())
    model.to(dtype)
    with torch.no_grad():
        ref = encoder(pixels)
        out = model(pixels)  # fp32 pixels in: the backbone casts to its weights' dtype
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert out.backbone_features.dtype == dtype
    assert torch.isfinite(out.backbone_features).all()
    assert rel_err(out.backbone_features, ref.backbone_features) < tol
    for ours, theirs in zip(out.fpn_features + out.fpn_position_encodings,
                            ref.fpn_features + ref.fpn_position_encodings, strict=True):
        assert ours.dtype == dtype
        assert torch.isfinite(ours).all()
        assert rel_err(ours, theirs) < tol


def test_position_grid_is_cached_and_usable_outside_inference_mode():
    enc = SinePositionEncoding(8)
    with torch.inference_mode():
        first = enc(6, 5, batch_size=2)
    again = enc(6, 5, batch_size=3)
    assert torch.equal(first[0], again[0]) and again.shape == (3, 16, 6, 5)
    assert again.data_ptr() == first.data_ptr()  # the same constant, not recomputed
    assert not again.is_inference()
    w = torch.ones(1, requires_grad=True)
    (again * w).sum().backward()  # a cached grid may meet autograd later
    assert w.grad is not None
