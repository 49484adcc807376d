"""Text-prompted video: the streaming engine against transformers' ``Sam3VideoModel`` in streaming mode.

Same random weights, same frames, same thresholds. transformers cannot fetch its mask-NMS and
hole-filling kernels here and skips both, and its streaming mode never retracts hot-start
tracks; the engine is run with the same three switches off. Differences on purpose:
- transformers re-encodes the memories of existing objects from their raw tracker masks on a
  frame where new objects start; the engine keeps the post-processed memories of that frame
  (the official SAM 3 behaviour). Outputs can therefore drift apart a little after such frames,
  which is why masks are compared by IoU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from operators.synthetic import synthetic_frame
from sam3_runtime.model import load_model, write_random_checkpoint
from sam3_runtime.preprocess import to_model_input
from sam3_runtime.video.engine import StreamingEngine
from sam3_runtime.video.types import EngineOptions
from tests.devices import least_agreement
from tests.parity.hf_reference import hf_video_config

SIZE = (160, 120)
FRAMES = 12
CONCEPTS = ["red square", "green disc"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(str(write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=3)),
                      device=torch.get_default_device(), dtype=torch.get_default_dtype())  # the test device (conftest)


def _video_config(loaded):
    # random weights score every query near 0.25: lower thresholds so that objects start and end
    return dataclasses.replace(loaded.config.video, score_threshold_detection=0.2, new_det_thresh=0.22)


def _reference_outputs(loaded, frames):
    from transformers import Sam3VideoModel
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    video_cfg = _video_config(loaded)
    hf = Sam3VideoModel(hf_video_config(dataclasses.replace(loaded.config, video=video_cfg))).eval()
    hf.load_state_dict(loaded.model.state_dict(), strict=True)
    session = Sam3VideoInferenceSession(
        video_height=SIZE[1], video_width=SIZE[0], inference_device=loaded.device, dtype=loaded.dtype
    )
    for text in CONCEPTS:
        pid = session.add_prompt(text)
        ids, mask = loaded.tokenizer.encode([text])
        session.prompt_input_ids[pid], session.prompt_attention_masks[pid] = ids.to(loaded.device), mask.to(loaded.device)
    outputs = []
    with torch.inference_mode():
        for frame in frames:
            pixels = to_model_input([frame], loaded.config.image_size, loaded.device, loaded.dtype)
            out = hf(inference_session=session, frame=pixels[0])
            outputs.append(_postprocess(session, out))
    return outputs


def _postprocess(session, out):
    """transformers' video post-processing (its processor class needs torchvision, absent here):
    upsample, binarise, drop empty and suppressed objects, then give each contested pixel to the
    object with the highest tracker score within its concept."""
    ids = sorted(out.obj_id_to_mask)
    hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
    low_res = torch.cat([out.obj_id_to_mask[i] for i in ids]) if ids else torch.zeros(0, 1, 1)
    masks = torch.nn.functional.interpolate(low_res[:, None], size=(SIZE[1], SIZE[0]), mode="bilinear",
                                            align_corners=False)[:, 0] > 0
    keep = [j for j, i in enumerate(ids) if masks[j].any() and i not in hidden]
    ids, masks = [ids[j] for j in keep], masks[keep]
    scores = torch.tensor([out.obj_id_to_tracker_score.get(i, 0.0) for i in ids])
    prompts = torch.tensor([session.obj_id_to_prompt_id[i] for i in ids])
    owner = torch.where(masks, scores[:, None, None], 0.0)
    for pid in prompts.unique():
        group = prompts == pid
        best = owner[group].argmax(0)  # ties go to the first object, as in the reference
        rank = torch.arange(int(group.sum()))[:, None, None]
        masks[group] &= (best[None] == rank) & (owner[group] > 0)
    concepts = {i: session.prompts[session.obj_id_to_prompt_id[i]] for i in ids}
    return {"object_ids": ids, "masks": masks, "concepts": concepts}


def test_same_objects_ids_and_masks_as_transformers_streaming(loaded):
    frames = [synthetic_frame(i, SIZE, 10.0) for i in range(FRAMES)]
    reference = _reference_outputs(loaded, frames)
    engine = StreamingEngine(loaded, EngineOptions(hotstart_mode="off", detection_nms=False, fill_holes=False),
                             _video_config(loaded))
    engine.open_session("s", CONCEPTS)
    total = 0
    for i, (frame, ref) in enumerate(zip(frames, reference, strict=True)):
        ours = engine.step({"s": frame})["s"]
        ref_masks = {k: m.cpu().numpy() for k, m in zip(ref["object_ids"], ref["masks"], strict=True) if m.any()}
        ours_masks = {o.track_id: o.mask for o in ours.objects}
        assert sorted(ours_masks) == sorted(ref_masks), f"frame {i}"
        for k, m in ref_masks.items():
            inter = np.logical_and(m, ours_masks[k]).sum()
            union = np.logical_or(m, ours_masks[k]).sum()
            assert inter / union >= least_agreement(0.99), f"frame {i} object {k}: IoU {inter / union:.4f}"
        total += len(ref_masks)
        assert {o.track_id: o.concept for o in ours.objects} == {k: ref["concepts"][k] for k in ref_masks}
    assert total >= 10 * FRAMES, f"the scenario should track several objects per frame, got {total}"
