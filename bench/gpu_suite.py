"""Measure the engine on a bare GPU machine in one command: ``python -m bench.gpu_suite --out DIR``.

Needs torch and numpy (transformers, if present, adds side-by-side rows). Full-size SAM 3 with seeded
random weights, built on the device: no checkpoint, no tokenizer (text is random token ids). Sections,
each with a time budget (what would overrun is skipped, with a note): ``matmul`` the bf16 ceiling;
``backbone`` the ViT at batch 1 and 8, eager and compiled, ms/frame and % of the ceiling (FLOPs from
the ViT geometry); ``tracker`` one step (memory attention, mask decoder, memory encoder) at 1/4/16/64
objects with 7 and 10 memory frames, and the slope: ms per extra object; ``engine`` ``step`` at 1 x 16
and 8 x 16 box-prompted objects plus a concept at 720p: fps, host reads per step, GPU busy % (kernel /
wall time from ``torch.profiler``: a lower bound); ``prompts`` each extra text prompt on an image
(detector, scores, top masks at 720p, one host read); ``transformers`` its vision encoder, same weights.
Medians after warm-up, CUDA events on a GPU. ``--device cpu --quick``: all of it on the tiny preset."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("bench.gpu_suite")

# Seconds per section on a GPU (compiling the ViT dominates the backbone's); all within 8 minutes.
BUDGETS_S = {"matmul": 20, "backbone": 150, "tracker": 60, "engine": 100, "prompts": 30, "transformers": 40}
TOTAL_BUDGET_S = 400  # leaves a minute for building the model and a measurement begun before a deadline
WHEELS = {"PIL": "pillow", "yaml": "pyyaml"}  # import name -> wheel, where they differ


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and repeats: the suite on a GPU, or ``QUICK`` to check on a CPU that every section runs."""

    matmul_n: int = 8192
    repeats: int = 20
    warmup: int = 5
    tracker_objects: tuple[int, ...] = (1, 4, 16, 64)
    engine_streams: tuple[int, ...] = (1, 8)
    engine_objects: int = 16
    engine_steps: int = 20
    engine_warmup: int = 10  # past the hot-start delay and a full memory ring
    frame_size: tuple[int, int] = (1280, 720)
    compile_backend: str = "inductor"
    model: str = "full"
    weight_std: float = 0.02  # keeps a 32-block ViT well conditioned (see bench/full_size_parity.py)


QUICK = Plan(matmul_n=512, repeats=2, warmup=1, tracker_objects=(1, 4), engine_streams=(1, 2), engine_objects=4,
             engine_steps=2, engine_warmup=2, frame_size=(160, 90), compile_backend="eager", model="tiny", weight_std=0.1)


@dataclasses.dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype
    plan: Plan
    deadline: float  # time.monotonic() after which a section stops adding measurements

    def timed(self, fn: Callable[[], object], repeats: int | None = None) -> float:
        """Median milliseconds of ``fn`` over the plan's repeats after its warm-up calls."""
        for _ in range(self.plan.warmup):
            fn()
        return statistics.median(self._once(fn) for _ in range(repeats or self.plan.repeats))

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()  # events time the device's queue: no host-side sync inside the measurement
        return start.elapsed_time(end)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def build_model(setup: Setup):
    """Seeded random SAM 3 on the device, in a ``LoadedModel`` without tokenizer (see ``text_features``)."""
    from sam3_runtime.config import Sam3Config
    from sam3_runtime.model import LoadedModel, Sam3Model

    config = Sam3Config.tiny() if setup.plan.model == "tiny" else Sam3Config.full()
    with torch.device(setup.device):
        model = Sam3Model(config)
    g = torch.Generator(device=setup.device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms near 1, everything else near 0
            noise = torch.randn(p.shape, generator=g, device=setup.device) * setup.plan.weight_std
            p.copy_(1.0 + noise if name.endswith("weight") and "norm" in name else noise)
        # random weights leave objects near "absent": shift the score bias so every object is tracked visible
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += 4.0
    model = model.to(setup.dtype).eval()
    return LoadedModel(model=model, config=config, tokenizer=None,  # type: ignore[arg-type]
                       device=setup.device, dtype=setup.dtype, model_id=f"random-{setup.plan.model}")


def text_features(loaded, prompts: list[str]):
    """Prompt features through the model's text encoder from random token ids (no tokenizer needed)."""
    cfg = loaded.config.detector.text_config

    def compute(missing: list[str], length: int = cfg.max_position_embeddings):
        ids = torch.randint(1, cfg.vocab_size, (len(missing), length), device=loaded.device)
        mask = (torch.arange(length, device=loaded.device) < 6).long().expand(len(missing), -1)  # 6 real tokens
        return loaded.model.detector_model.encode_text(ids, mask)

    return loaded.text_cache.get_or_compute(prompts, compute)


def pixels(loaded, batch: int) -> torch.Tensor:
    s = loaded.config.image_size
    g = torch.Generator(device=loaded.device).manual_seed(batch)
    return torch.randn(batch, 3, s, s, generator=g, device=loaded.device).to(loaded.dtype)


def section_matmul(setup: Setup, loaded) -> dict:
    n = setup.plan.matmul_n
    a, b = torch.randn(2, n, n, device=setup.device, dtype=torch.bfloat16)
    ms = setup.timed(lambda: a @ b, repeats=3 * setup.plan.repeats)
    tflops = 2 * n**3 / ms / 1e9
    return {"bf16_tflops": tflops, "rows": [{"what": f"bf16 matmul {n}^3", "ms": ms, "tflops": tflops}]}


def vit_flops(config) -> float:
    """Forward FLOPs of the ViT for one image (2 per multiply-add): patch embedding, per block the
    q/k/v/out projections, the MLP and attention (QK^T and AV) over a window or the whole grid."""
    v = config.detector.vision_config.backbone_config
    side = v.image_size // v.patch_size
    tokens, d = side * side, v.hidden_size
    flops = 2 * tokens * (3 * v.patch_size**2) * d
    for layer in range(v.num_hidden_layers):
        span = tokens if layer in v.global_attn_indexes else v.window_size**2
        flops += 2 * tokens * 4 * d * d + 2 * tokens * 2 * d * v.intermediate_size + 2 * 2 * tokens * span * d
    return float(flops)


def section_backbone(setup: Setup, loaded, ceiling_tflops: float | None) -> dict:
    backbone, flops = loaded.model.detector_model.vision_encoder.backbone, vit_flops(loaded.config)
    rows: list[dict] = []
    for mode in ("eager", "compiled"):
        eager_layers = backbone.layers
        if mode == "compiled":
            # block by block: all blocks of a kind (windowed, global) share one compiled graph
            backend = setup.plan.compile_backend
            backbone.layers = torch.nn.ModuleList(torch.compile(layer, backend=backend) for layer in eager_layers)
        try:
            for batch in (1, 8):
                if time.monotonic() > setup.deadline:
                    rows.append({"what": f"ViT {mode}, batch {batch}", "skipped": "time budget"})
                    continue
                x = pixels(loaded, batch)
                ms = setup.timed(lambda x=x: backbone(x))
                tflops = batch * flops / ms / 1e9
                rows.append({"what": f"ViT {mode}, batch {batch}", "ms": ms, "ms_per_frame": ms / batch, "tflops": tflops,
                             "pct_of_ceiling": 100 * tflops / ceiling_tflops if ceiling_tflops else None})
        finally:
            backbone.layers = eager_layers
    return {"flops_per_frame": flops, "rows": rows}


def section_tracker(setup: Setup, loaded) -> dict:
    from sam3_runtime.modeling.tracker import MemoryBank
    from sam3_runtime.video.propagation import propagate, tracker_features

    tracker = loaded.model.tracker_model
    feats = tracker_features(loaded.model, loaded.model.detector_model.vision_encoder.backbone(pixels(loaded, 1)))
    _, c, h, w = feats.features.shape
    pointers = min(16, tracker.cfg.max_object_pointers_in_encoder)
    rows: list[dict] = []
    for frames in (7, 10):
        sizes = []
        for n in setup.plan.tracker_objects:
            if time.monotonic() > setup.deadline:
                break
            dev, dt = setup.device, setup.dtype  # a conditioning frame and frames-1 recent ones, all valid
            bank = MemoryBank(spatial=torch.randn(n, frames, tracker.mem_dim, h, w, device=dev, dtype=dt),
                              spatial_offsets=torch.arange(frames, device=dev).expand(n, frames),
                              pointers=torch.randn(n, pointers, c, device=dev, dtype=dt),
                              pointer_offsets=torch.arange(1, pointers + 1, device=dev).expand(n, pointers))
            index = torch.zeros(n, dtype=torch.long, device=dev)

            def step(bank=bank, index=index):
                out = propagate(loaded.model, feats, index, bank, return_high_res_masks=True)
                tracker.encode_memory(feats.features, out.high_res_masks, out.object_score_logits, binarize=False)

            ms = setup.timed(step, repeats=min(setup.plan.repeats, 10))  # 64 objects take a while
            rows.append({"what": f"step, {n} objects, {frames} memory frames", "ms": ms})
            sizes.append((n, ms))
        if len(sizes) >= 2:  # least squares over the object counts: the cost of each extra object
            slope = float(np.polyfit([n for n, _ in sizes], [ms for _, ms in sizes], 1)[0])
            rows.append({"what": f"per extra object, {frames} memory frames", "ms_per_object": slope})
    return {"rows": rows}


def synthetic_video(frames: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """uint8 RGB frames: noise with coloured squares drifting over it."""
    w, h = size
    rng = np.random.default_rng(seed)
    base, starts, colours = rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.uniform(0, 1, (6, 2)), rng.integers(0, 255, (6, 3))
    video = [base.copy() for _ in range(frames)]
    for t, img in enumerate(video):
        for (x, y), colour in zip((starts + 0.01 * t) % 0.8 * (w, h), colours, strict=True):
            img[int(y):int(y) + h // 8, int(x):int(x) + w // 8] = colour
    return video


def section_engine(setup: Setup, loaded) -> dict:
    from sam3_runtime.host_reads import count_host_reads
    from sam3_runtime.video.engine import StreamingEngine
    from sam3_runtime.video.types import EngineOptions

    plan = setup.plan
    size, objects, steps, warmup = plan.frame_size, plan.engine_objects, plan.engine_steps, plan.engine_warmup
    text_features(loaded, ["concept"])  # cached: the engine never calls the (absent) tokenizer
    rows = []
    for streams in plan.engine_streams:
        if time.monotonic() > setup.deadline:
            rows.append({"what": f"{streams} x {objects} objects", "skipped": "time budget"})
            continue
        engine = StreamingEngine(loaded, EngineOptions())
        videos = [synthetic_video(warmup + steps, size, seed) for seed in range(streams)]
        rng = np.random.default_rng(streams)
        for s in range(streams):
            engine.open_session(f"s{s}", ["concept"])
            for x0, y0 in (rng.uniform(0, 0.7, (objects, 2)) * size).tolist():
                engine.add_box(f"s{s}", (x0, y0, x0 + 0.25 * size[0], y0 + 0.25 * size[1]))

        def step(t: int, engine=engine, videos=videos) -> int:
            out = engine.step({f"s{s}": video[t] for s, video in enumerate(videos)})
            return sum(len(r.objects) for r in out.values())
        for t in range(warmup):
            step(t)
        reads, visible = [], []
        setup.sync()
        t0 = time.perf_counter()
        for t in range(warmup, warmup + steps):
            with count_host_reads() as counted:
                visible.append(step(t))
            reads.append(counted.count)
        setup.sync()
        wall_s = time.perf_counter() - t0
        rows.append({"what": f"{streams} x {objects} objects + a concept, {size[0]}x{size[1]}",
                     "ms_per_step": 1e3 * wall_s / steps, "fps": streams * steps / wall_s,
                     "host_reads_per_step": statistics.mean(reads), "objects_out_per_step": statistics.mean(visible),
                     "gpu_busy_pct": gpu_busy_pct(setup, lambda step=step: step(warmup + steps - 1))})
    return {"rows": rows}


def gpu_busy_pct(setup: Setup, fn: Callable[[], object]) -> float | None:
    """Kernel time / wall time over three calls of ``fn``, from ``torch.profiler`` (None on the CPU)."""
    if setup.device.type != "cuda":
        return None
    setup.sync()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        setup.sync()
        wall_us = (time.perf_counter() - t0) * 1e6
    return 100.0 * sum(e.device_time for e in prof.events() if e.device_type.name == "CUDA") / wall_us


def section_prompts(setup: Setup, loaded) -> dict:
    from sam3_runtime.host_reads import to_host

    detector, size = loaded.model.detector_model, setup.plan.frame_size
    vision = detector.encode_image(pixels(loaded, 1))
    text = text_features(loaded, [f"prompt {'x' * k}" for k in range(9)])
    times = {}
    for count in (1, 9):
        def run(count=count):
            out = detector.detect(vision, torch.zeros(count, dtype=torch.long, device=setup.device),
                                  text.features[:count], text.mask[:count])
            scores = out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()
            top = scores.topk(min(4, scores.shape[1]), dim=1).indices
            masks = torch.gather(out.pred_masks, 1, top[:, :, None, None].expand(-1, -1, *out.pred_masks.shape[2:]))
            masks = torch.nn.functional.interpolate(masks, size=size[::-1], mode="bilinear") > 0
            to_host(scores, masks)

        times[count] = setup.timed(run)
    return {"rows": [{"what": "1 text prompt on an image", "ms": times[1]}, {"what": "9 text prompts", "ms": times[9]},
                     {"what": "per extra text prompt", "ms_per_prompt": (times[9] - times[1]) / 8}]}


def section_transformers(setup: Setup, loaded) -> dict:
    if importlib.util.find_spec("transformers") is None:
        return {"skipped": "transformers is not installed"}
    from transformers import Sam3VideoConfig, Sam3VideoModel

    hf_config = {k: v for k, v in loaded.config.to_hf_dict().items() if k not in ("model_type", "architectures")}
    with torch.device(setup.device):
        hf = Sam3VideoModel(Sam3VideoConfig(**hf_config))
    hf.load_state_dict(loaded.model.state_dict(), strict=True)
    hf = hf.to(setup.dtype).eval()
    ours, theirs = loaded.model.detector_model.encode_image, hf.detector_model.get_vision_features
    rows = []
    for batch in (1, 8):
        if time.monotonic() > setup.deadline:
            break
        x = pixels(loaded, batch)
        rows.append({"what": f"vision encoder (ViT + FPN), eager, batch {batch}", "ours_ms": setup.timed(lambda x=x: ours(x)),
                     "transformers_ms": setup.timed(lambda x=x: theirs(pixel_values=x))})
    return {"rows": rows}


def engine_import_problem() -> str | None:
    """None when sam3_runtime's model and engine import here, else one line naming the wheel to carry."""
    try:
        import sam3_runtime.video.engine  # noqa: F401 (imports the model, its tokenizer, masks, preprocessing)
    except ModuleNotFoundError as e:
        wheel = WHEELS.get(e.name or "", e.name)
        return f"sam3_runtime needs the wheel {wheel} (for import {e.name}): pip install {wheel}"
    return None


def run_suite(device: torch.device, dtype: torch.dtype, quick: bool, out_dir: Path) -> dict:
    started = time.monotonic()
    overall = started + TOTAL_BUDGET_S  # no section starts after this
    setup = Setup(device=device, dtype=dtype, plan=QUICK if quick else Plan(), deadline=overall)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what a deployment runs with
    result: dict = {"meta": {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "quick": quick,
                             "torch": torch.__version__, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                             "model": setup.plan.model}, "notes": []}
    result["matmul"] = _run(section_matmul, setup, None, overall)
    problem = engine_import_problem()
    if problem:  # the model sections cannot run: say which wheel to carry
        result["notes"].append(problem)
        logger.error("%s", problem)
    else:
        loaded = build_model(setup)
        result["backbone"] = _run(section_backbone, setup, loaded, overall, result["matmul"].get("bf16_tflops"))
        for fn in (section_tracker, section_engine, section_prompts, section_transformers):
            result[fn.__name__.removeprefix("section_")] = _run(fn, setup, loaded, overall)
    result["meta"]["total_s"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_suite.json").write_text(json.dumps(result, indent=2))
    (out_dir / "gpu_suite.md").write_text(markdown(result))
    return result


def _run(fn: Callable[..., dict], setup: Setup, loaded, overall: float, *args) -> dict:
    name, now = fn.__name__.removeprefix("section_"), time.monotonic()
    if now > overall:
        return {"skipped": f"the suite's {TOTAL_BUDGET_S} s were spent before this section"}
    section = dataclasses.replace(setup, deadline=min(overall, now + BUDGETS_S[name]))
    logger.info("section %s (budget %d s)", name, BUDGETS_S[name])
    try:
        with torch.inference_mode():
            out = fn(section, loaded, *args)
    except Exception as e:  # one section failing must not cost the others' numbers
        logger.exception("section %s failed", name)
        return {"error": f"{type(e).__name__}: {e}"}
    out["seconds"] = round(time.monotonic() - now, 1)
    return out


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = [f"# GPU suite: {m['gpu'] or m['device']}, {m['dtype']}, {m['model']} model, torch {m['torch']}, "
             f"{m['total_s']} s", "", "| section | measurement | result |", "| --- | --- | --- |"]
    for name, sec in ((k, v) for k, v in r.items() if k not in ("meta", "notes")):
        rows = sec.get("rows", []) + [{"what": key, "": sec[key]} for key in ("skipped", "error") if key in sec]
        for row in rows:
            result = ", ".join(f"{k.replace('_', ' ')} {'n/a' if v is None else f'{v:.3g}' if isinstance(v, float) else v}"
                               .strip() for k, v in row.items() if k != "what")
            lines.append(f"| {name} | {row['what']} | {result.replace('|', '/')} |")
    lines += ["", *[f"- {n}" for n in r.get("notes", [])]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="auto: bf16 on a GPU, fp32 on the CPU")
    ap.add_argument("--quick", action="store_true", help="the tiny model and few repeats: checks the suite runs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu --quick")
    dtype = getattr(torch, args.dtype if args.dtype != "auto" else "bfloat16" if device.type == "cuda" else "float32")
    run_suite(device, dtype, args.quick, Path(args.out))
    logger.info("wrote %s\n%s", Path(args.out) / "gpu_suite.json", (Path(args.out) / "gpu_suite.md").read_text())


if __name__ == "__main__":
    main()
