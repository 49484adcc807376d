"""Streaming video tracking speed: this runtime's engine against transformers' SAM 3 tracker.

    python -m bench.bench_video                                   # CPU, tiny preset
    python -m bench.bench_video --preset full --device cuda --dtype bfloat16

Both sides run in one process on the same weights and the same synthetic frames, fed one at a
time, with box prompts on the first frame and no concepts. Per frame both do the same model
work: ViT backbone (+ the detector FPN that both encoders compute), tracker neck, memory
attention, mask decoder and memory encoder for every object, and the masks brought to the
frame's resolution and thresholded. Reported:

- ``track N objects``: one stream, N boxes; our ``StreamingEngine.step`` against
  ``Sam3TrackerVideoModel`` in streaming mode (its vision features computed by the detector's
  vision encoder and the tracker neck, as ``Sam3VideoModel`` wires them);
- ``S streams x N objects``: S sessions advanced by one ``step`` call with S frames, against
  the same sessions advanced by S ``step`` calls one after another (and, for context,
  transformers with S sessions one after another).

In the ``1 step vs S steps`` row the "reference" column is this runtime stepping the sessions one
by one. The engine runs with hot-start retraction and the non-overlap output step off (the
reference has neither; ``--non-overlapping`` turns the latter on). Random weights score every
object just below "visible"; ``--score-shift`` moves both models' object-score bias so that
objects are tracked as visible and both output paths handle real masks (the last column
counts the objects with a non-empty mask per round, ours/reference).

Ours and the reference are stepped alternately frame by frame, so a busy machine slows both
alike. Times are medians over ``--frames`` frames after ``--warmup`` frames: the first frame,
where the boxes are prompted, is always a warm-up frame, and the default warm-up fills the
memory (7 frames) and the object-pointer list (16 frames), so the timed frames are the steady
state of a long stream. Ratios > 1 mean this runtime is faster.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from operators.synthetic import synthetic_frame
from sam3_runtime.config import Sam3Config
from sam3_runtime.device import resolve_device, resolve_dtype
from sam3_runtime.model import LoadedModel, Sam3Model, load_model, write_random_checkpoint
from sam3_runtime.preprocess import to_model_input
from sam3_runtime.video.engine import StreamingEngine
from sam3_runtime.video.types import EngineOptions

logger = logging.getLogger("bench.video")

FPS = 10.0


def build_models(preset: str, device: torch.device, dtype: torch.dtype, workdir: str):
    """Our ``LoadedModel`` and transformers' ``Sam3VideoModel`` holding the same random weights."""
    from tests.parity.hf_reference import hf_video_config, hf_video_model

    if preset == "tiny":
        loaded = load_model(str(write_random_checkpoint(f"{workdir}/tiny")), device=device, dtype=dtype)
        from transformers import Sam3VideoModel

        hf = Sam3VideoModel(hf_video_config(loaded.config)).eval()
        hf.load_state_dict(loaded.model.state_dict(), strict=True)
        return loaded, hf.to(device, dtype)
    # Full size: no tokenizer can be built for the real vocabulary offline, and none is needed
    # without concepts; the runtime's parameters alias the reference's (no second copy).
    # Standard deviation 0.02 keeps a 32-block ViT well conditioned (see full_size_parity).
    config = Sam3Config.full()
    hf = hf_video_model(config, scale=0.02).to(device, dtype)
    with torch.device("meta"):
        ours = Sam3Model(config)
    ours.load_state_dict(hf.state_dict(), strict=True, assign=True)
    loaded = LoadedModel(model=ours.eval(), config=config, tokenizer=None,  # type: ignore[arg-type]
                         device=device, dtype=dtype, model_id="random-full")
    return loaded, hf


def shift_object_scores(loaded: LoadedModel, hf, shift: float) -> None:
    """Add ``shift`` to the tracker's object-score bias in both models (once where they share it).

    Random weights leave every object's score just below 0 (all objects "absent"); shifting
    it makes them visible, so that the output path (masks at frame size, boxes) does its work.
    """
    ours = loaded.model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias
    ref = hf.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias
    with torch.no_grad():
        ours += shift
        if ref.data_ptr() != ours.data_ptr():
            ref += shift


def make_boxes(n: int, size: tuple[int, int], seed: int) -> list[tuple[float, float, float, float]]:
    """``n`` boxes (pixels, xyxy) of 15-40% of the frame side, anywhere in the frame."""
    w, h = size
    g = torch.Generator().manual_seed(seed)
    wh = (0.15 + 0.25 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return [tuple(float(v) for v in row) for row in torch.cat([xy, xy + wh], 1).tolist()]


class OurStreams:
    """Our engine with one session per stream; ``together`` steps all streams in one call."""

    def __init__(self, loaded: LoadedModel, options: EngineOptions, boxes: list[list], together: bool):
        self.engine = StreamingEngine(loaded, options)
        self.together = together
        self.ids = [f"s{k}" for k in range(len(boxes))]
        for sid, stream_boxes in zip(self.ids, boxes, strict=True):
            self.engine.open_session(sid)
            for box in stream_boxes:
                self.engine.add_box(sid, box)

    def step(self, frames: list[np.ndarray]) -> int:
        """Advance every stream by its frame; returns the number of visible objects."""
        if self.together:
            out = self.engine.step(dict(zip(self.ids, frames, strict=True)))
        else:
            out = {}
            for sid, frame in zip(self.ids, frames, strict=True):
                out.update(self.engine.step({sid: frame}))
        return sum(len(r.objects) for r in out.values())


class ReferenceStreams:
    """transformers' streaming tracker, one inference session per stream, stepped one after another."""

    def __init__(self, hf, loaded: LoadedModel, boxes: list[list], size: tuple[int, int]):
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
            Sam3TrackerVideoInferenceSession,
        )

        self.hf, self.loaded, self.boxes = hf, loaded, boxes
        w, h = size
        dev = loaded.device
        self.sessions = [
            Sam3TrackerVideoInferenceSession(video_height=h, video_width=w, inference_device=dev,
                                             inference_state_device=dev, video_storage_device=dev, dtype=loaded.dtype)
            for _ in boxes
        ]
        # boxes in model-input pixels, as the engine scales them
        s = loaded.config.image_size
        self.scale = torch.tensor([s / w, s / h, s / w, s / h])
        self.t = 0

    def step(self, frames: list[np.ndarray]) -> int:
        visible = 0
        for session, boxes, frame in zip(self.sessions, self.boxes, frames, strict=True):
            visible += self._step_one(session, boxes, frame)
        self.t += 1
        return visible

    def _step_one(self, session, boxes, frame: np.ndarray) -> int:
        hf, t = self.hf, self.t
        pixels = to_model_input([frame], self.loaded.config.image_size, self.loaded.device, self.loaded.dtype)
        vision = hf.detector_model.get_vision_features(pixel_values=pixels)
        feats, pos = hf.get_vision_features_for_tracker(vision)
        session.cache.cache_vision_features(t, {"vision_feats": feats, "vision_pos_embeds": pos})
        if t == 0:
            labels = torch.tensor([[[2, 3]]], dtype=torch.int32, device=self.loaded.device)
            for obj_id, box in enumerate(boxes):
                corners = (torch.tensor(box) * self.scale).reshape(1, 1, 2, 2).to(self.loaded.device)
                session.add_point_inputs(session.obj_id_to_idx(obj_id), 0, {"point_coords": corners, "point_labels": labels})
            session.obj_with_new_inputs = list(range(len(boxes)))
        out = hf.tracker_model(session, frame_idx=t, frame=pixels)
        # what a caller does next (the processor's post_process_masks): masks at the frame's size
        masks = F.interpolate(out.pred_masks.float(), size=frame.shape[:2], mode="bilinear", align_corners=False) > 0
        masks = masks.cpu().numpy()
        return int(masks.reshape(masks.shape[0], -1).any(1).sum())


def run_pair(ours, ref, videos: list[list[np.ndarray]], warmup: int, device: torch.device):
    """Median ms per round of frames of ``ours`` and of ``ref``, stepped alternately, and each
    side's mean number of objects with a non-empty mask per round (a check that both track)."""
    times: tuple[list[float], list[float]] = ([], [])
    visible: tuple[list[int], list[int]] = ([], [])
    for t in range(len(videos[0])):
        frames = [v[t] for v in videos]
        for k, side in enumerate((ours, ref)):
            ms, n = timed_once(lambda side=side, frames=frames: side.step(frames), device)
            if t >= warmup:
                times[k].append(ms)
                visible[k].append(n)
    return (statistics.median(times[0]), statistics.median(times[1]),
            f"{statistics.mean(visible[0]):.1f}/{statistics.mean(visible[1]):.1f}")


def timed_once(fn: Callable[[], int], device: torch.device) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3, out


def video(num: int, size: tuple[int, int], shift: int) -> list[np.ndarray]:
    return [synthetic_frame(i + shift, size, FPS) for i in range(num)]


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--objects", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--stream-objects", type=int, default=8)
    p.add_argument("--frames", type=int, default=20, help="timed frames per configuration")
    p.add_argument("--warmup", type=int, default=16,
                   help="untimed frames first (>= 1: the prompted frame); by 16 the memory and pointer rings are full")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="frame size (default 160 120 tiny, 1280 720 full)")
    p.add_argument("--score-shift", type=float, default=0.1,
                   help="added to the object-score bias of both models (random weights score every object ~-0.03)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--non-overlapping", action="store_true",
                   help="keep the engine's non-overlap output step on (the reference has none)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    size = tuple(args.size) if args.size else ((160, 120) if args.preset == "tiny" else (1280, 720))
    warmup = max(1, args.warmup)
    num = warmup + args.frames
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        loaded, hf = build_models(args.preset, device, dtype, workdir)
    logger.info("built both models in %.1f s", time.perf_counter() - t0)
    shift_object_scores(loaded, hf, args.score_shift)
    # transformers' streaming mode never retracts and has no output post-processing
    options = EngineOptions(hotstart_mode="off", non_overlapping=args.non_overlapping)

    rows = []
    for n in args.objects:
        boxes = [make_boxes(n, size, seed=n)]
        ours = OurStreams(loaded, options, boxes, together=True)
        ref = ReferenceStreams(hf, loaded, boxes, size)
        o, r, vis = run_pair(ours, ref, [video(num, size, 0)], warmup, device)
        rows.append((f"track {n} object(s), per frame", o, r, vis))

    s, n = args.streams, args.stream_objects
    boxes = [make_boxes(n, size, seed=100 + k) for k in range(s)]
    videos = [video(num, size, 7 * k) for k in range(s)]
    together = OurStreams(loaded, options, boxes, together=True)
    alone = OurStreams(loaded, options, boxes, together=False)
    o, r, vis = run_pair(together, alone, videos, warmup, device)
    rows.append((f"{s} streams x {n} obj: 1 step vs {s} steps", o, r, vis))
    together = OurStreams(loaded, options, boxes, together=True)
    ref = ReferenceStreams(hf, loaded, boxes, size)
    o, r, vis = run_pair(together, ref, videos, warmup, device)
    rows.append((f"{s} streams x {n} obj: 1 step vs transformers", o, r, vis))

    logger.info("device %s, dtype %s, preset %s, frames %dx%d, torch %s, %d threads", device,
                str(dtype).removeprefix("torch."), args.preset, size[0], size[1], torch.__version__, torch.get_num_threads())
    logger.info("median of %d frames after %d warm-up frames; ms per frame (all streams of a round)", args.frames, warmup)
    logger.info("%-44s %10s %10s %7s %12s", "what (ms)", "ours", "reference", "ratio", "visible o/r")
    for name, a, b, vis in rows:
        logger.info("%-44s %10.2f %10.2f %7.2f %12s", name, a, b, b / a if a > 0 else float("nan"), vis)


if __name__ == "__main__":
    main()
