"""Tokenizer: parity with transformers' CLIP fast tokenizer on the same tokenizer.json."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.tokenizer import BOS_TOKEN, EOS_TOKEN, Sam3Tokenizer, build_clip_tokenizer

TEXT = Sam3Config.tiny().detector.text_config
CONTEXT = TEXT.max_position_embeddings

PROMPTS = [
    "person",
    "a red car",
    "Person Without A HELMET",
    "forklift, pallet; truck... (yellow)!",
    "  lots   of\twhite\nspace  ",
    "it's the worker's helmet, isn't it?",
    "3 dogs and 12 cats",
    "café crème — naïve",
    "🚗 emoji car",
    "a, b",
]
LONG_PROMPT = "a very long description of a person " * 8


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_clip_tokenizer(TEXT.vocab_size).save(str(path))
    return path


@pytest.fixture(scope="module")
def ours(tokenizer_file) -> Sam3Tokenizer:
    return Sam3Tokenizer.from_file(tokenizer_file, context_length=CONTEXT)


@pytest.fixture(scope="module")
def hf(tokenizer_file):
    from transformers import CLIPTokenizerFast

    return CLIPTokenizerFast(tokenizer_file=str(tokenizer_file))


def _hf_encode(hf, prompts):
    # Sam3Processor's call plus truncation (without it a long prompt cannot be batched at all)
    out = hf(prompts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def test_built_tokenizer_has_exact_vocab_and_special_ids():
    tok = build_clip_tokenizer(TEXT.vocab_size)
    assert tok.get_vocab_size(with_added_tokens=True) == TEXT.vocab_size == 1024
    assert tok.token_to_id(BOS_TOKEN) == TEXT.bos_token_id == 1022
    assert tok.token_to_id(EOS_TOKEN) == TEXT.eos_token_id == 1023
    assert sorted(tok.get_vocab().values()) == list(range(TEXT.vocab_size))
    # CLIP layout: 256 byte characters, the same 256 with the end-of-word mark, then merges
    assert tok.id_to_token(0) == "!" and tok.id_to_token(256) == "!</w>"
    assert all(tok.id_to_token(i + 256) == tok.id_to_token(i) + "</w>" for i in range(256))
    assert len(tok.id_to_token(600)) > 1


def test_build_is_deterministic_and_sized():
    assert build_clip_tokenizer(1024).to_str() == build_clip_tokenizer(1024).to_str()
    small = build_clip_tokenizer(600)
    assert small.get_vocab_size() == 600 and small.token_to_id(EOS_TOKEN) == 599
    with pytest.raises(ValueError, match="at least 514"):
        build_clip_tokenizer(100)
    with pytest.raises(ValueError, match="merged tokens"):
        build_clip_tokenizer(100_000)


def test_built_tokenizer_learned_english():
    tok = build_clip_tokenizer(TEXT.vocab_size)
    enc = tok.encode("the person")
    assert enc.tokens == [BOS_TOKEN, "the</w>", "person</w>", EOS_TOKEN]


def test_matches_clip_fast_tokenizer(ours, hf):
    assert hf.pad_token_id == ours.pad_token_id == TEXT.eos_token_id
    assert hf.bos_token_id == ours.bos_token_id and hf.eos_token_id == ours.eos_token_id
    ids, mask = ours.encode(PROMPTS + [LONG_PROMPT])
    ref_ids, ref_mask = _hf_encode(hf, PROMPTS + [LONG_PROMPT])
    assert ids.shape == (len(PROMPTS) + 1, CONTEXT) and ids.dtype == torch.long and mask.dtype == torch.long
    assert torch.equal(ids, ref_ids)
    assert torch.equal(mask, ref_mask)


def test_layout_of_an_encoded_prompt(ours):
    ids, mask = ours.encode(["a red car", "Person Without A HELMET"])
    for row, m in zip(ids, mask, strict=True):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # right padding
        assert row[0] == TEXT.bos_token_id and row[n - 1] == TEXT.eos_token_id
        assert (row[n:] == ours.pad_token_id).all()
        assert not (row[1 : n - 1] >= TEXT.bos_token_id).any()
    # lower-casing is part of the normalizer
    assert torch.equal(ours.encode(["PERSON"])[0], ours.encode(["person"])[0])


def test_too_long_prompt_is_truncated_keeping_the_end_token(ours, caplog):
    with caplog.at_level(logging.WARNING, logger="sam3_runtime.tokenizer"):
        ids, mask = ours.encode(["car", LONG_PROMPT])
    assert mask[1].all() and ids[1, 0] == TEXT.bos_token_id and ids[1, -1] == TEXT.eos_token_id
    assert ours.decode(ids[1].tolist()).startswith("a very long description")
    assert len(caplog.records) == 1 and LONG_PROMPT.strip()[:30] in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sam3_runtime.tokenizer"):
        ours.encode(["a short one"])
    assert not caplog.records


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_is_an_error(ours, bad):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        ours.encode(["car", bad])


def test_bad_argument_types(ours):
    with pytest.raises(TypeError, match="list of prompts"):
        ours.encode("car")
    with pytest.raises(TypeError, match="prompt 0"):
        ours.encode([3])
    ids, mask = ours.encode([])
    assert ids.shape == mask.shape == (0, CONTEXT)


def test_context_length_follows_argument(tokenizer_file, hf):
    short = Sam3Tokenizer.from_file(tokenizer_file, context_length=8)
    ids, mask = short.encode(["a person on a bicycle next to a car"])
    ref = hf(["a person on a bicycle next to a car"], padding="max_length", max_length=8, truncation=True)
    assert ids.tolist() == ref["input_ids"] and mask.tolist() == ref["attention_mask"]
    with pytest.raises(ValueError):
        Sam3Tokenizer.from_file(tokenizer_file, context_length=1)


def test_pad_token_from_tokenizer_config(tmp_path):
    build_clip_tokenizer(TEXT.vocab_size).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "!", "special": False}}))
    tok = Sam3Tokenizer.from_file(tmp_path)  # a directory works too
    ids, mask = tok.encode(["car"])
    assert tok.pad_token_id == 0 and (ids[mask == 0] == 0).all() and (mask == 0).sum() > 20
    assert Sam3Tokenizer.from_file(tmp_path, pad_token=EOS_TOKEN).pad_token_id == TEXT.eos_token_id


def test_loads_as_generic_fast_tokenizer(tokenizer_file, ours):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN, unk_token=EOS_TOKEN,
    )
    ref_ids, ref_mask = _hf_encode(hf, PROMPTS)
    ids, mask = ours.encode(PROMPTS)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)


def test_source_tokenizer_is_not_modified():
    tok = build_clip_tokenizer(TEXT.vocab_size)
    Sam3Tokenizer(tok)
    assert tok.padding is None and tok.truncation is None


def test_missing_file_and_non_clip_vocab(tmp_path):
    with pytest.raises(FileNotFoundError):
        Sam3Tokenizer.from_file(tmp_path / "nope.json")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    with pytest.raises(ValueError, match="startoftext"):
        Sam3Tokenizer(Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
