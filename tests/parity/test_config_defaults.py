"""The runtime's config defaults are transformers' SAM 3 defaults, and ``config.json`` round-trips.

Compared through the runtime's own mapping (``to_hf_dict`` / ``from_hf_dict``), field by field,
so a wrong default (a RoPE theta, a video heuristic threshold, an epsilon, a size of the full
preset) or a field the mapping does not carry fails with its dotted name.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

import pytest

from sam3_runtime.config import Sam3Config, VideoConfig
from sam3_runtime.tokenizer import Sam3Tokenizer
from tests.parity.hf_reference import hf_video_config

# transformers-only settings the runtime has no use for: training-time dropout and init ranges,
# and transformers' own bookkeeping; everything else the runtime must carry.
_TRANSFORMERS_ONLY = {
    "dropout", "hidden_dropout", "attention_dropout", "memory_attention_dropout", "memory_attention_rope_dropout",
    "initializer_range", "initializer_factor", "transformers_version", "architectures", "output_hidden_states",
    "return_dict", "dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "tie_word_embeddings", "output_attentions", "torchscript", "pruned_heads", "tokenizer_class",
    "prefix", "task_specific_params", "finetuning_task", "add_cross_attention", "cross_attention_hidden_size",
    "decoder_start_token_id", "sep_token_id", "_name_or_path", "use_cache", "_attn_implementation_autoset",
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.loads(json.dumps(value))  # tuples and lists compare alike
    return out


def _transformers_defaults() -> dict[str, Any]:
    from transformers import Sam3VideoConfig

    return _flatten(Sam3VideoConfig().to_dict())


def _transformers_only(key: str) -> bool:
    return bool(set(key.split(".")) & _TRANSFORMERS_ONLY)


def test_every_default_is_transformers_default():
    ours = _flatten(Sam3Config.full().to_hf_dict())
    theirs = _transformers_defaults()
    ours.pop("architectures")
    missing = sorted(k for k in ours if k not in theirs)
    assert missing == [], f"the runtime writes fields transformers does not know: {missing}"
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert differ == {}, f"defaults that differ (runtime, transformers): {differ}"
    uncarried = sorted(k for k in theirs if k not in ours and not _transformers_only(k))
    assert uncarried == [], f"transformers settings the runtime's config does not carry: {uncarried}"
    # the pinned values this is about, spelled out
    assert theirs["detector_config.vision_config.backbone_config.rope_parameters.rope_theta"] == 10000.0
    assert theirs["tracker_config.rope_parameters.rope_theta"] == 10000.0
    assert theirs["detector_config.text_config.max_position_embeddings"] == 32


def test_transformers_defaults_read_into_the_full_preset():
    from transformers import Sam3Config as HFSam3Config
    from transformers import Sam3VideoConfig

    assert Sam3Config.from_hf_dict(Sam3VideoConfig().to_dict()) == Sam3Config.full()
    assert Sam3Config() == Sam3Config.full()
    # a bare detector config.json (model_type sam3) reads into the full detector and default video heuristics
    detector_only = Sam3Config.from_hf_dict(HFSam3Config().to_dict())
    assert detector_only.detector == Sam3Config.full().detector
    assert detector_only.video == VideoConfig()


def test_tokenizer_context_length_is_the_text_encoders():
    from transformers import Sam3VideoConfig

    length = Sam3VideoConfig().detector_config.text_config.max_position_embeddings
    assert inspect.signature(Sam3Tokenizer.__init__).parameters["context_length"].default == length
    assert inspect.signature(Sam3Tokenizer.from_file).parameters["context_length"].default == length


def _changed(value: Any) -> Any:
    """A different value of the same type, so a field the round trip drops shows."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value * 0.5 + 0.01
    return value


def _perturbed(config: Sam3Config) -> Sam3Config:
    video = dataclasses.replace(config.video, **{f.name: _changed(getattr(config.video, f.name))
                                                  for f in dataclasses.fields(VideoConfig)})
    vision = config.detector.vision_config
    vit = dataclasses.replace(vision.backbone_config, rope_theta=5000.0, layer_norm_eps=1e-5)
    detector = dataclasses.replace(config.detector, vision_config=dataclasses.replace(vision, backbone_config=vit))
    tracker = dataclasses.replace(config.tracker, memory_attention_rope_theta=20000.0, sigmoid_scale_for_mem_enc=15.0,
                                  multimask_output_for_tracking=False)
    return dataclasses.replace(config, detector=detector, tracker=tracker, video=video)


@pytest.mark.parametrize("preset", ["tiny", "full"])
def test_config_json_round_trips_through_transformers(tmp_path, preset):
    base = getattr(Sam3Config, preset)()
    for config in (base, _perturbed(base)):
        hf = hf_video_config(config)
        hf.save_pretrained(str(tmp_path))
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["model_type"] == "sam3_video"
        assert Sam3Config.from_hf_dict(saved) == config
    assert _perturbed(base) != base
