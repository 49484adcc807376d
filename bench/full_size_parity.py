"""Full-size parity: this runtime against transformers' SAM 3 at the published size.

    python -m bench.full_size_parity                          # CPU, fp32 (a few minutes)
    python -m bench.full_size_parity --device cuda --dtype bfloat16

The test suite checks parity on tiny configs; this script checks the same numerics at the
real size (72x72 tokens, windows of 24 without padding, 200 queries, 288x288 masks), with
random weights shared by both models (no copy: the runtime's parameters alias the reference's).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.device import resolve_device, resolve_dtype
from sam3_runtime.modeling.detector import Sam3Detector

logger = logging.getLogger("bench.full_size_parity")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tests.parity.hf_reference import hf_video_model

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = Sam3Config.full()
    t0 = time.perf_counter()
    hf = hf_video_model(config, scale=0.02).detector_model.to(device, dtype)
    with torch.device("meta"):
        ours = Sam3Detector(config.detector)
    ours.load_state_dict(hf.state_dict(), strict=True, assign=True)
    ours.eval()
    logger.info("built both models in %.0f s", time.perf_counter() - t0)

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, config.image_size, config.image_size, generator=g).to(device, dtype)
    ids = torch.randint(0, 49406, (2, 32), generator=g)
    ids[:, 0] = 49406
    lengths = torch.tensor([4, 9])
    mask = torch.arange(32)[None] < lengths[:, None]
    ids[torch.arange(2), lengths - 1] = 49407
    ids[~mask] = 49407
    ids, mask = ids.to(device), mask.long().to(device)

    t0 = time.perf_counter()
    ref = hf(pixel_values=pixels.expand(2, -1, -1, -1), input_ids=ids, attention_mask=mask)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    vision = ours.encode_image(pixels)
    text = ours.encode_text(ids, mask)
    out = ours.detect(vision, torch.zeros(2, dtype=torch.long, device=device), text.features, text.mask)
    t_ours = time.perf_counter() - t0

    a, b = out.pred_masks > 0, ref.pred_masks > 0
    iou = ((a & b).flatten(2).sum(-1) / (a | b).flatten(2).sum(-1).clamp(min=1)).min().item()
    logger.info("device %s dtype %s: reference %.1f s, ours %.1f s (1 image x 2 prompts)", device, dtype, t_ref, t_ours)
    logger.info("relative error: logits %.2e presence %.2e boxes %.2e mask logits %.2e; min mask IoU %.4f",
                rel(out.pred_logits, ref.pred_logits), rel(out.presence_logits, ref.presence_logits),
                rel(out.pred_boxes, ref.pred_boxes), rel(out.pred_masks, ref.pred_masks), iou)


if __name__ == "__main__":
    main()
