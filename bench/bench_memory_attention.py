"""Memory attention speed: ``TrackerModel.condition_on_memory`` against transformers' equivalent.

    python -m bench.bench_memory_attention                        # tiny and mid geometry, CPU
    python -m bench.bench_memory_attention --presets full --objects 2 --repeats 1
    python -m bench.bench_memory_attention --device cuda --dtype bfloat16 --presets full

Both sides hold the same random tracker weights and condition the same frame on the same
memories. Per object the memory is a stream's steady state: one conditioning frame, six recent
frames and 16 object pointers. Ours runs all objects in one call, one frame shared by them; in
the ``mixed`` rows half the objects have fewer memories (a batch of streams at different ages),
which ours runs as groups without an attention mask. transformers conditions one object at a
time (``_build_memory_attention_inputs`` + ``_process_object_pointers`` + ``memory_attention``,
as ``Sam3TrackerVideoModel`` does for every object of a frame). Times are medians over
``--repeats`` calls after one warm-up call, the two sides called alternately (a busy machine
slows both alike); ratios > 1 mean this runtime is faster.

Geometries: ``tiny`` is ``Sam3Config.tiny()``; ``mid`` has the full widths (256 hidden, 64
memory channels, 4 layers) on a 24 x 24 token grid; ``full`` is SAM 3's 72 x 72 grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

import torch

from sam3_runtime.config import Sam3Config, TrackerConfig
from sam3_runtime.device import resolve_device, resolve_dtype
from sam3_runtime.modeling.tracker import MemoryBank, TrackerModel

logger = logging.getLogger("bench.memory_attention")

STEADY_SPATIAL = [0, 6, 5, 4, 3, 2, 1]  # temporal offsets: one conditioning frame + six recent ones
STEADY_POINTERS = list(range(1, 17))


def tracker_config(preset: str) -> TrackerConfig:
    if preset == "tiny":
        return Sam3Config.tiny().tracker
    cfg = Sam3Config.full().tracker
    if preset == "full":
        return cfg
    if preset != "mid":
        raise ValueError(f"unknown preset {preset!r}: use tiny, mid or full")
    image = 24 * 14
    return dataclasses.replace(cfg, image_size=image, memory_attention_rope_feat_sizes=(24, 24),
                               prompt_encoder_config=dataclasses.replace(cfg.prompt_encoder_config, image_size=image))


def build(preset: str, device: torch.device, dtype: torch.dtype):
    """Our tracker and transformers' ``Sam3TrackerVideoModel`` with the same random weights."""
    from transformers import Sam3TrackerVideoModel

    from tests.parity.hf_reference import hf_video_config

    cfg = Sam3Config.tiny() if preset == "tiny" else Sam3Config.full()
    cfg = dataclasses.replace(cfg, tracker=tracker_config(preset))
    torch.manual_seed(0)
    hf = Sam3TrackerVideoModel(hf_video_config(cfg).tracker_config, remove_vision_encoder=True).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            base = 1.0 if name.endswith("weight") and "norm" in name else 0.0
            p.copy_(base + 0.02 * torch.randn(p.shape, generator=g))
    ours = TrackerModel(cfg.tracker).eval()
    ours.load_state_dict(hf.state_dict(), strict=False)
    return ours.to(device, dtype), hf.to(device, dtype)


def make_inputs(ours: TrackerModel, n: int, mixed: bool, device: torch.device, dtype: torch.dtype):
    """One frame, its position encoding and ``n`` objects' memory bank (``mixed``: every other
    object keeps only its conditioning frame + two recent ones and four pointers)."""
    c, cm = ours.hidden_dim, ours.mem_dim
    h, w = ours.prompt_encoder.image_embedding_size
    g = torch.Generator().manual_seed(2)
    s, p = len(STEADY_SPATIAL), len(STEADY_POINTERS)
    s_valid = torch.ones(n, s, dtype=torch.bool)
    p_valid = torch.ones(n, p, dtype=torch.bool)
    if mixed:
        s_valid[1::2, 3:] = False
        p_valid[1::2, 4:] = False
    bank = MemoryBank(
        spatial=torch.randn(n, s, cm, h, w, generator=g).to(device, torch.bfloat16),
        spatial_offsets=torch.tensor([STEADY_SPATIAL] * n, device=device),
        pointers=torch.randn(n, p, c, generator=g).to(device, dtype),
        pointer_offsets=torch.tensor([STEADY_POINTERS] * n, dtype=torch.float32, device=device),
    )
    if mixed:
        bank.spatial_valid, bank.pointer_valid = s_valid.to(device), p_valid.to(device)
        if "spatial_valid_host" in {f.name for f in dataclasses.fields(MemoryBank)}:
            bank.spatial_valid_host, bank.pointer_valid_host = s_valid.numpy(), p_valid.numpy()
    feats = torch.randn(1, c, h, w, generator=g).to(device, dtype)
    pos = torch.randn(1, c, h, w, generator=g).to(device, dtype)
    return feats, pos, bank


def reference(hf, feats: torch.Tensor, pos: torch.Tensor, bank: MemoryBank) -> list[torch.Tensor]:
    """transformers' memory conditioning, object by object, on each object's valid memories."""
    c, h, w = feats.shape[1:]
    pe = hf.memory_encoder.position_encoding((1, hf.mem_dim, h, w), feats.device, feats.dtype)
    pe = pe.flatten(2).permute(2, 0, 1)
    tokens, token_pos = feats[0].flatten(1).T[:, None], pos[0].flatten(1).T[:, None]
    outs = []
    for i in range(bank.spatial.shape[0]):
        s = slice(None) if bank.spatial_valid is None else bank.spatial_valid[i]
        p = slice(None) if bank.pointer_valid is None else bank.pointer_valid[i]
        spatial = [(int(o), {"maskmem_features": m.flatten(1).T[:, None], "maskmem_pos_enc": pe})
                   for m, o in zip(bank.spatial[i, s], bank.spatial_offsets[i, s].tolist(), strict=True)]
        memories, positions = hf._build_memory_attention_inputs(spatial, feats.device)
        offsets = [int(o) for o in bank.pointer_offsets[i, p].tolist()]
        ptr, ptr_pos = hf._process_object_pointers(offsets, [q[None] for q in bank.pointers[i, p]],
                                                   hf.config.max_object_pointers_in_encoder, 1, c, feats.device)
        out = hf.memory_attention(
            current_vision_features=tokens, current_vision_position_embeddings=token_pos,
            memory=torch.cat(memories + [ptr]).to(feats.dtype),
            memory_posision_embeddings=torch.cat(positions + [ptr_pos]).to(feats.dtype),
            num_object_pointer_tokens=ptr.shape[0],
        )
        outs.append(out.reshape(h * w, c).T.reshape(c, h, w))
    return outs


def timed_pair(ours, ref, repeats: int, device: torch.device) -> tuple[float, float, object, object]:
    """Median seconds of ``ours()`` and ``ref()``, called alternately so a busy machine slows both alike."""
    results = [ours(), ref()]  # warm-up (RoPE tables, allocator, kernels)
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for k, fn in enumerate((ours, ref)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            results[k] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), results[0], results[1]


def run(presets: list[str], objects: list[int], repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for preset in presets:
        ours, hf = build(preset, device, dtype)
        for n in objects:
            for mixed in (False, True):
                feats, pos, bank = make_inputs(ours, n, mixed, device, dtype)
                with torch.inference_mode():
                    t_ours, t_ref, out, ref = timed_pair(
                        lambda: ours.condition_on_memory(feats, pos, bank),  # noqa: B023
                        lambda: reference(hf, feats, pos, bank),  # noqa: B023
                        repeats, device,
                    )
                err = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(out, ref, strict=True))
                rows.append({"preset": preset, "objects": n, "layout": "mixed" if mixed else "steady",
                             "ours_ms": 1e3 * t_ours, "reference_ms": 1e3 * t_ref, "ratio": t_ref / t_ours,
                             "max_rel_err": err})
                logger.info("%s", rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid", "full"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    rows = run(args.presets, args.objects, args.repeats, device, dtype)
    lines = ["| geometry | objects | layout | ours ms | transformers ms | ratio | max rel. err |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['preset']} | {r['objects']} | {r['layout']} | {r['ours_ms']:.1f} | {r['reference_ms']:.1f} | "
              f"{r['ratio']:.2f}x | {r['max_rel_err']:.1e} |" for r in rows]
    logger.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
