"""Text encoder: parity with transformers' SAM 3 ``get_text_features``, weight layout, cache."""

from __future__ import annotations

import math

import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.modeling.text_encoder import (
    TextEmbeddingCache,
    TextEncoder,
    TextFeatures,
    causal_padding_mask,
    select_text_weights,
)
from sam3_runtime.tokenizer import Sam3Tokenizer, build_clip_tokenizer
from tests.parity.hf_reference import hf_video_model, reference_shapes

TINY = Sam3Config.tiny()


def _build(config: Sam3Config, device: str | torch.device = "cpu") -> TextEncoder:
    det = config.detector
    with torch.device(device):
        return TextEncoder(det.text_config, det.detr_encoder_config.hidden_size).eval()


@pytest.fixture(scope="module")
def hf_video():
    return hf_video_model(TINY)


@pytest.fixture(scope="module")
def tokenizer() -> Sam3Tokenizer:
    return Sam3Tokenizer(build_clip_tokenizer(TINY.detector.text_config.vocab_size))


@pytest.fixture(scope="module")
def ours(hf_video):
    model = _build(TINY)
    model.load_state_dict(select_text_weights(hf_video.state_dict()), strict=True)
    return model


def _padded_batch(lengths: list[int], seq_len: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CLIP-like rows: start token, random words, end token, then end-token padding."""
    cfg = TINY.detector.text_config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.bos_token_id, (len(lengths), seq_len), generator=g)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = cfg.bos_token_id
        ids[i, n - 1] = cfg.eos_token_id
        ids[i, n:] = cfg.pad_token_id
        mask[i, :n] = 1
    return ids, mask


def _reference(hf_video, input_ids, attention_mask) -> torch.Tensor:
    with torch.no_grad():
        out = hf_video.detector_model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return out.pooler_output


def test_matches_transformers_on_padded_prompts(hf_video, ours):
    ids, mask = _padded_batch([2, 5, 17, 32, 9])
    with torch.no_grad():
        out = ours(ids, mask)
    ref = _reference(hf_video, ids, mask)
    assert out.features.shape == (5, 32, TINY.detector.detr_encoder_config.hidden_size)
    assert ref.abs().mean() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(out.features, ref, rtol=1e-4, atol=1e-5)
    assert out.mask.dtype == torch.bool
    assert torch.equal(out.mask, mask.bool())


def test_matches_transformers_on_tokenized_prompts(hf_video, ours, tokenizer):
    ids, mask = tokenizer.encode(["a person", "a red car parked next to the building", "forklift", "Helmet!"])
    with torch.no_grad():
        out = ours(ids, mask)
    torch.testing.assert_close(out.features, _reference(hf_video, ids, mask), rtol=1e-4, atol=1e-5)


def test_matches_transformers_without_mask_and_short_context(hf_video, ours):
    ids, _ = _padded_batch([7, 7], seq_len=7, seed=3)
    with torch.no_grad():
        out = ours(ids)
    torch.testing.assert_close(out.features, _reference(hf_video, ids, None), rtol=1e-4, atol=1e-5)
    assert out.mask.all()


def test_real_tokens_ignore_padding(ours):
    """Causal + padding mask: what follows a prompt must not change its features."""
    ids, mask = _padded_batch([6, 6], seed=1)
    ids[1] = ids[0]
    ids[1, 6:] = torch.arange(26) + 100  # same prompt, different padding ids
    with torch.no_grad():
        out = ours(ids, mask)
    torch.testing.assert_close(out.features[0, :6], out.features[1, :6])
    ids2 = ids.clone()
    ids2[:, 3] = 500  # changing a token changes itself and everything after it, not before
    with torch.no_grad():
        out2 = ours(ids2, mask)
    torch.testing.assert_close(out2.features[:, :3], out.features[:, :3])
    assert not torch.allclose(out2.features[:, 3:6], out.features[:, 3:6])


def test_clip_pooled_projection_is_not_computed(ours):
    ids, mask = _padded_batch([4])
    with torch.no_grad():
        before = ours(ids, mask).features
        saved = ours.text_encoder.text_projection.weight.clone()
        ours.text_encoder.text_projection.weight.fill_(float("nan"))
        try:
            after = ours(ids, mask).features
        finally:
            ours.text_encoder.text_projection.weight.copy_(saved)
    torch.testing.assert_close(after, before)


def test_mask_never_leaves_a_query_blind():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    allowed = causal_padding_mask(mask)
    assert allowed.shape == (2, 1, 4, 4)
    assert allowed.any(-1).all()
    # right padding (row 1): exactly causal AND key-is-real, no extra entries
    expected = torch.ones(4, 4, dtype=torch.bool).tril() & mask[1].bool()
    assert torch.equal(allowed[1, 0], expected)


def test_left_padded_row_stays_finite(ours):
    ids, _ = _padded_batch([5])
    mask = torch.tensor([[0, 0, 1, 1, 1] + [0] * 27])
    with torch.no_grad():
        out = ours(ids, mask)
    assert torch.isfinite(out.features).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_fp32(ours, dtype):
    ids, mask = _padded_batch([3, 12, 32])
    half = _build(TINY)
    half.load_state_dict(ours.state_dict())
    half.to(dtype)
    with torch.no_grad():
        ref = ours(ids, mask).features
        out = half(ids, mask).features
    assert out.dtype == dtype
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_rejects_bad_inputs(ours):
    ids, mask = _padded_batch([4])
    with pytest.raises(ValueError, match="attention_mask shape"):
        ours(ids, mask[:, :10])
    with pytest.raises(ValueError, match="at most 32"):
        ours(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[P, L\]"):
        ours(ids[0])


def test_full_size_keys_and_shapes_match_reference():
    model = _build(Sam3Config.full(), device="meta")
    ours_shapes = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    ref_shapes = {
        "text_encoder." + k: "x".join(map(str, v)) for k, v in reference_shapes("detector_model.text_encoder.").items()
    } | {"text_projection." + k: "x".join(map(str, v)) for k, v in reference_shapes("detector_model.text_projection.").items()}
    assert len(ref_shapes) == 24 * 16 + 7
    assert ours_shapes == ref_shapes
    n_params = sum(math.prod(p.shape) for p in model.parameters())
    assert 350e6 < n_params < 360e6  # 49408x1024 embeddings + 24 layers of width 1024


def test_select_text_weights_strips_prefix(hf_video):
    full = hf_video.state_dict()
    picked = select_text_weights(full)
    assert set(picked) == set(_build(TINY).state_dict())
    assert all(torch.equal(picked[k], full["detector_model." + k]) for k in picked)


# -- TextEmbeddingCache --------------------------------------------------------------------


class _Encoder:
    """A fake compute_fn: features encode the prompt's length, so rows can be checked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> TextFeatures:
        self.calls.append(list(prompts))
        feats = torch.stack([torch.full((4, 2), float(len(p))) for p in prompts])
        mask = torch.stack([torch.arange(4) < min(len(p), 4) for p in prompts])
        return TextFeatures(features=feats, mask=mask)


def test_cache_encodes_each_prompt_once_and_keeps_order():
    cache, enc = TextEmbeddingCache(max_entries=8), _Encoder()
    out = cache.get_or_compute(["car", "person", "car"], enc)
    assert enc.calls == [["car", "person"]]
    assert out.features.shape == (3, 4, 2)
    assert out.features[:, 0, 0].tolist() == [3.0, 6.0, 3.0]
    assert out.mask.dtype == torch.bool and out.mask[1].all()
    out = cache.get_or_compute(["person", "dog", "car"], enc)
    assert enc.calls[1:] == [["dog"]]
    assert out.features[:, 0, 0].tolist() == [6.0, 3.0, 3.0]
    assert (cache.hits, cache.misses) == (2, 3)


def test_cache_evicts_least_recently_used():
    cache, enc = TextEmbeddingCache(max_entries=2), _Encoder()
    cache.get_or_compute(["a"], enc)
    cache.get_or_compute(["bb"], enc)
    cache.get_or_compute(["a"], enc)  # "a" is now the most recent
    cache.get_or_compute(["ccc"], enc)  # evicts "bb"
    assert "a" in cache and "ccc" in cache and "bb" not in cache and len(cache) == 2
    cache.get_or_compute(["bb"], enc)
    assert enc.calls[-1] == ["bb"]
    cache.clear()
    assert len(cache) == 0


def test_cache_serves_requests_larger_than_capacity():
    cache, enc = TextEmbeddingCache(max_entries=2), _Encoder()
    out = cache.get_or_compute(["a", "bb", "ccc", "dddd"], enc)
    assert out.features[:, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert len(cache) == 2


def test_cache_with_real_encoder(ours, tokenizer):
    def encode(prompts: list[str]) -> TextFeatures:
        with torch.no_grad():
            return ours(*tokenizer.encode(prompts))

    cache = TextEmbeddingCache()
    first = cache.get_or_compute(["forklift", "person"], encode)
    mixed = cache.get_or_compute(["person", "truck", "forklift"], encode)
    direct = encode(["person", "truck", "forklift"])
    torch.testing.assert_close(mixed.features, direct.features)
    assert torch.equal(mixed.mask, direct.mask)
    torch.testing.assert_close(mixed.features[2], first.features[0])


def test_cache_rejects_bad_calls():
    cache = TextEmbeddingCache()
    with pytest.raises(TypeError):
        cache.get_or_compute("car", _Encoder())
    with pytest.raises(ValueError, match="rows"):
        cache.get_or_compute(["a", "b"], lambda ps: _Encoder()(ps[:1]))
    with pytest.raises(ValueError):
        TextEmbeddingCache(max_entries=0)
