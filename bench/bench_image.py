"""Image segmentation speed: this runtime against transformers' SAM 3, same weights, same inputs.

    python -m bench.bench_image                                  # CPU, tiny config
    python -m bench.bench_image --preset full --device cuda --dtype bfloat16

Reports, per configuration, the median of ``--iters`` timed runs after ``--warmup`` runs:
- ``pipeline``: I images x P prompts through the whole detector (ours: backbone once per
  image, text once per prompt from the cache, detector once per pair in one batch; the
  reference: one batched forward over all pairs, its documented multi-prompt use);
- ``backbone``: the ViT alone at batch I, and its share of the matmul rate measured in the
  same process (a square matmul of the same dtype);
- ``extra prompt``: what each prompt beyond the first costs on one image.
Ratios > 1 mean this runtime is faster.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from sam3_runtime.config import Sam3Config
from sam3_runtime.device import resolve_device, resolve_dtype
from sam3_runtime.modeling.detector import Sam3Detector

logger = logging.getLogger("bench.image")


def timed(fn, device: torch.device, iters: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def vit_flops(config: Sam3Config, batch: int) -> float:
    """Multiply-add FLOPs (x2) of the ViT's linear layers and attention for ``batch`` images."""
    vit = config.detector.vision_config.backbone_config
    tokens = (vit.image_size // vit.patch_size) ** 2
    d, mlp = vit.hidden_size, vit.intermediate_size
    linear = 2 * tokens * (4 * d * d + 2 * d * mlp)
    flops = 0.0
    for i in range(vit.num_hidden_layers):
        span = tokens if i in vit.global_attn_indexes else vit.window_size**2
        flops += linear + 2 * 2 * tokens * span * d
    patch = 2 * tokens * 3 * vit.patch_size**2 * d
    return batch * (flops + patch)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timed(lambda: a @ b, device, iters, 2)
    return 2 * n**3 / (ms / 1e3)


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--backbone-batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from tests.parity.hf_reference import hf_video_model

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = Sam3Config.tiny() if args.preset == "tiny" else Sam3Config.full()
    hf = hf_video_model(config).detector_model.to(device, dtype)
    ours = Sam3Detector(config.detector).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    ours = ours.to(device, dtype)

    g = torch.Generator().manual_seed(0)
    s, n_img, n_prm = config.image_size, args.images, args.prompts
    pixels = torch.randn(n_img, 3, s, s, generator=g).to(device, dtype)
    vocab = config.detector.text_config.vocab_size
    ids = torch.randint(0, vocab - 2, (n_prm, 32), generator=g)
    mask = (torch.arange(32)[None] < torch.randint(3, 8, (n_prm, 1), generator=g)).long()
    ids, mask = ids.to(device), mask.to(device)
    text = ours.encode_text(ids, mask)  # cached per prompt in the runtime

    def ours_pipeline(k_img=n_img, k_prm=n_prm):
        vision = ours.encode_image(pixels[:k_img])
        ii = torch.arange(k_img, device=device).repeat_interleave(k_prm)
        pi = torch.arange(k_prm, device=device).repeat(k_img)
        return ours.detect(vision, ii, text.features[pi], text.mask[pi])

    def hf_pipeline(k_img=n_img, k_prm=n_prm):
        ii = torch.arange(k_img, device=device).repeat_interleave(k_prm)
        pi = torch.arange(k_prm, device=device).repeat(k_img)
        return hf(pixel_values=pixels[ii], input_ids=ids[pi], attention_mask=mask[pi])

    t = dict(iters=args.iters, warmup=args.warmup)
    rows = []
    ours_ms = timed(ours_pipeline, device, **t)
    hf_ms = timed(hf_pipeline, device, **t)
    rows.append((f"pipeline {n_img} img x {n_prm} prompts", ours_ms, hf_ms))

    one_ours = timed(lambda: ours_pipeline(1, 1), device, **t)
    many_ours = timed(lambda: ours_pipeline(1, n_prm), device, **t)
    one_hf = timed(lambda: hf_pipeline(1, 1), device, **t)
    many_hf = timed(lambda: hf_pipeline(1, n_prm), device, **t)
    rows.append(("extra prompt on 1 image", (many_ours - one_ours) / (n_prm - 1), (many_hf - one_hf) / (n_prm - 1)))

    bb = args.backbone_batch
    bb_pixels = torch.randn(bb, 3, s, s, generator=g).to(device, dtype)
    ours_bb = timed(lambda: ours.vision_encoder.backbone(bb_pixels), device, **t)
    hf_bb = timed(lambda: hf.vision_encoder.backbone(bb_pixels), device, **t)
    rows.append((f"backbone batch {bb}, per image", ours_bb / bb, hf_bb / bb))

    n = 8192 if device.type == "cuda" else 1024
    rate = matmul_rate(device, dtype, n, max(3, args.iters // 2))
    flops = vit_flops(config, bb)
    logger.info("device %s, dtype %s, preset %s, torch %s", device, dtype, args.preset, torch.__version__)
    logger.info("%-36s %12s %12s %8s", "what (ms)", "ours", "reference", "ratio")
    for name, a, b in rows:
        logger.info("%-36s %12.3f %12.3f %8.2f", name, a, b, b / a if a > 0 else float("nan"))
    logger.info("matmul %d^3 %s: %.1f TFLOP/s; backbone reaches %.0f%% of it (reference %.0f%%)",
                n, str(dtype).removeprefix("torch."), rate / 1e12,
                100 * flops / (ours_bb / 1e3) / rate, 100 * flops / (hf_bb / 1e3) / rate)


if __name__ == "__main__":
    main()
