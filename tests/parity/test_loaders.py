"""Parity through the real checkpoint loaders.

transformers writes a random ``Sam3VideoModel`` with ``save_pretrained`` (safetensors + its own
``config.json``), and the same weights are also written as an official-format ``sam3.pt``
(``tests/parity/official_format.py``). The runtime loads each with ``load_model`` and must give
what the writing transformers model gives: a bug in the key mapping or in reading
``config.json`` reaches only the runtime's side, so it cannot cancel out.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sam3_runtime.config import Sam3Config
from sam3_runtime.model import LoadedModel, Sam3Model, load_model
from sam3_runtime.preprocess import to_model_input
from sam3_runtime.tokenizer import build_clip_tokenizer
from sam3_runtime.video.memory import ObjectMemory
from sam3_runtime.video.propagation import add_objects_from_boxes, commit_memories, propagate, tracker_features
from tests.parity.hf_reference import OFFICIAL_TSV, hf_video_model
from tests.parity.official_format import to_official
from tests.parity.test_detector import _compare
from tests.parity.test_video_tracking import BOXES, mask_iou, moving_frames

NUM_FRAMES = 10  # > 7 memory slots: the memory ring wraps
# Random weights score every object slightly below 0 ("absent"); shifting the score head puts the
# first frame's objects on both sides of 0 (scores from -0.07 to 0.11, far above the ~1e-4
# differences, so no decision flips): the no-object pointer and occlusion embedding enter the
# memories beside real masks and pointers, and later frames see the objects.
SCORE_SHIFT = 1.3
PROMPTS = ["red square", "a green disc on grass"]


@dataclass
class Written:
    config: Sam3Config
    reference: torch.nn.Module  # the transformers Sam3VideoModel that wrote both checkpoints
    dirs: dict[str, Path]  # format -> checkpoint directory


def _randomize_fourier_matrix(hf, seed: int) -> None:
    """The tracker's random Fourier matrix is a buffer, which ``randomize_weights`` leaves alone.

    SAM 3 uses one matrix for both the prompt encoder and the image positional encoding (the
    official checkpoint stores it once), so both buffers get the same fresh draw.
    """
    g = torch.Generator().manual_seed(seed)
    trk = hf.tracker_model
    matrix = torch.randn(trk.shared_image_embedding.positional_embedding.shape, generator=g)
    with torch.no_grad():
        trk.shared_image_embedding.positional_embedding.copy_(matrix)
        trk.prompt_encoder.shared_embedding.positional_embedding.copy_(matrix)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    config = Sam3Config.tiny()
    hf = hf_video_model(config, seed=0)
    _randomize_fourier_matrix(hf, seed=5)
    with torch.no_grad():
        hf.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += SCORE_SHIFT
    root = tmp_path_factory.mktemp("loaders")
    hf_dir, official_dir = root / "transformers", root / "official"
    hf.save_pretrained(str(hf_dir))
    build_clip_tokenizer(config.detector.text_config.vocab_size).save(str(hf_dir / "tokenizer.json"))
    official_dir.mkdir()
    torch.save({"model": to_official(hf.state_dict(), config, seed=1)}, official_dir / "sam3.pt")
    for name in ("config.json", "tokenizer.json"):  # as in the hub repo: sam3.pt beside the transformers config
        shutil.copy(hf_dir / name, official_dir / name)
    return Written(config, hf, {"transformers": hf_dir, "official": official_dir})


@pytest.fixture(scope="module", params=["transformers", "official"])
def loaded(request, written) -> LoadedModel:
    return load_model(str(written.dirs[request.param]), device="cpu", dtype="float32")


def test_inverse_mapping_writes_the_published_official_key_list():
    """The test's own official writer, on a full-size model, gives exactly the published sam3.pt keys."""
    with torch.device("meta"):
        model = Sam3Model(Sam3Config.full())
    written = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in to_official(
        model.state_dict(), Sam3Config.full()).items()}
    published = {}
    for line in OFFICIAL_TSV.read_text().splitlines():
        if not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            published[key] = (tuple(int(d) for d in shape.split("x")), dtype)
    assert written == published


def test_no_written_tensor_is_all_zero(written):
    files = {
        "model.safetensors": load_file(str(written.dirs["transformers"] / "model.safetensors")),
        "sam3.pt": torch.load(written.dirs["official"] / "sam3.pt", weights_only=True)["model"],
    }
    for name, state in files.items():
        # no tensor must be zero by definition: every one of them is drawn at random
        zero = [k for k, v in state.items() if not v.any()]
        assert zero == [], f"{name}: all-zero tensors {zero[:5]}"
        assert len(state) >= 500, name  # the whole model, not a handful of keys


def test_loaded_weights_and_config_are_the_writers(written, loaded):
    assert loaded.config == written.config
    ours, ref = loaded.model.state_dict(), written.reference.state_dict()
    assert ours.keys() == ref.keys()
    differ = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert differ == []


@torch.inference_mode()
def test_detector_end_to_end(written, loaded, hf_roi_align):
    size = written.config.image_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)]
    pixels = to_model_input(images, size, "cpu", torch.float32)
    ids, mask = loaded.tokenizer.encode(PROMPTS)
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3]], [[0.6, 0.5, 0.4, 0.3]]])
    labels = torch.tensor([[1], [0]])
    ref = written.reference.detector_model(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                                           input_boxes=boxes, input_boxes_labels=labels)

    detector = loaded.model.detector_model
    text = loaded.text_features(PROMPTS)
    out = detector.detect(detector.encode_image(pixels), torch.tensor([0, 1]), text.features, text.mask,
                          boxes=boxes, box_labels=labels, box_mask=torch.ones(2, 1, dtype=torch.bool))
    _compare(ref, out)
    expected = ref.pred_logits.sigmoid() * ref.presence_logits.sigmoid()
    torch.testing.assert_close(out.scores, expected, rtol=1e-4, atol=1e-6)


@torch.inference_mode()
def _reference_tracking(hf, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """transformers' tracker in streaming mode, the objects box-prompted on the first frame."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceSession,
    )

    size = frames.shape[-1]
    session = Sam3TrackerVideoInferenceSession(video_height=size, video_width=size, dtype=torch.float32)
    results = []
    for t in range(frames.shape[0]):
        feats, pos = hf.get_vision_features_for_tracker(hf.detector_model.get_vision_features(pixel_values=frames[t : t + 1]))
        session.cache.cache_vision_features(t, {"vision_feats": feats, "vision_pos_embeds": pos})
        if t == 0:
            for obj_id, box in enumerate(BOXES):
                labels = torch.tensor([[[2, 3]]], dtype=torch.int32)  # a box is two corner points
                session.add_point_inputs(session.obj_id_to_idx(obj_id), 0,
                                         {"point_coords": box.reshape(1, 1, 2, 2), "point_labels": labels})
            session.obj_with_new_inputs = list(range(len(BOXES)))
        out = hf.tracker_model(session, frame_idx=t, frame=frames[t])
        results.append((out.pred_masks.clone(), out.object_score_logits.reshape(-1).clone()))
    return results


@torch.inference_mode()
def _runtime_tracking(model, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    memory = ObjectMemory.for_model(model, capacity=len(BOXES))
    rows = memory.add_objects(len(BOXES))
    index = [0] * len(rows)
    results = []
    for t in range(frames.shape[0]):
        ff = tracker_features(model, model.detector_model.vision_encoder.backbone(frames[t : t + 1]))
        first = t == 0
        out = (add_objects_from_boxes(model, ff, index, BOXES) if first
               else propagate(model, ff, index, [(memory, rows, t)], return_high_res_masks=True))
        commit_memories(model, ff, index, out.high_res_masks, out.object_score_logits, out.object_pointer,
                        [(memory, rows, t)], is_conditioning=first, binarize=first)
        results.append((out.low_res_masks, out.object_score_logits[:, 0]))
    return results


def test_box_prompted_tracking(written, loaded):
    frames = moving_frames(NUM_FRAMES, written.config.image_size, seed=2)
    ref = _reference_tracking(written.reference, frames)
    got = _runtime_tracking(loaded.model, frames)
    visible = absent = 0
    for t, ((ref_masks, ref_scores), (masks, scores)) in enumerate(zip(ref, got, strict=True)):
        for i in range(len(BOXES)):
            assert mask_iou(masks[i], ref_masks[i]) >= 0.99, f"frame {t} object {i}"
        torch.testing.assert_close(scores, ref_scores, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(masks, ref_masks, rtol=1e-3, atol=3e-3)
        visible += int((ref_scores > 0).sum())
        absent += int((ref_scores <= 0).sum())
    assert visible >= 20 and absent >= 2, (visible, absent)
