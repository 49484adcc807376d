"""The streaming engine's memory stays flat over thousands of frames.

A real ``StreamingEngine`` (a micro random model, so that thousands of frames take seconds)
steps several streams, each with a box-prompted object and a concept detected at a low
threshold, so that objects are created, retracted and evicted all along. After a warm-up that
fills every memory slot and every shape-keyed cache, nothing the engine keeps may grow with
the frame count: the process's resident memory, the live Python objects, the live tensors and
each stream's memory bank. A leak of 1 KB per frame is several times the noise over the window.

The stream runs in a fresh interpreter (this file run as a script): the test process may hold
Ray's driver threads and other tests' leftovers, whose allocations would blur the measurement.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from operators.synthetic import synthetic_frame
from sam3_runtime.config import Sam3Config
from sam3_runtime.model import load_model, write_random_checkpoint
from sam3_runtime.video.engine import StreamingEngine
from sam3_runtime.video.types import EngineOptions

STREAMS = 8  # stepped together: one engine step advances every stream by one frame
WARMUP_STEPS = 100  # past hot-start, full memory slots, and every object count the streams reach
MEASURED_STEPS = 250  # STREAMS * MEASURED_STEPS = 2000 frames in the measured window
FRAME_SIZE = (64, 48)
CHECKPOINT_SEED = 3  # random weights under which tracks keep showing and hot-start keeps retracting
# measured noise over the window: a few hundred KB of resident memory, about ten Python objects
RSS_BUDGET_PER_FRAME = 1024
COUNT_BUDGET_PER_FRAME = 0.1

STATM = Path("/proc/self/statm")


def micro_config() -> Sam3Config:
    """The tiny preset cut down further: 56 px input (4x4 tokens), one layer wherever one is enough.

    The width stays 128: the tracker's memory attention splits each object pointer into
    width / 64 tokens (see ``Sam3Config.tiny``).
    """
    tiny = Sam3Config.tiny()
    size, tokens = 56, 4
    det, trk = tiny.detector, tiny.tracker
    vit = dataclasses.replace(
        det.vision_config.backbone_config, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, image_size=size, window_size=2, global_attn_indexes=(1,), pretrain_image_size=28,
    )
    feature_sizes = ((tokens * 4,) * 2, (tokens * 2,) * 2, (tokens,) * 2)
    det = dataclasses.replace(
        det,
        vision_config=dataclasses.replace(det.vision_config, backbone_config=vit, backbone_feature_sizes=feature_sizes),
        text_config=dataclasses.replace(det.text_config, num_hidden_layers=1),
        detr_encoder_config=dataclasses.replace(det.detr_encoder_config, num_layers=1),
        detr_decoder_config=dataclasses.replace(det.detr_decoder_config, num_layers=1, num_queries=8),
    )
    trk = dataclasses.replace(
        trk, image_size=size, prompt_encoder_config=dataclasses.replace(trk.prompt_encoder_config, image_size=size),
        memory_attention_num_layers=1, memory_attention_rope_feat_sizes=(tokens, tokens),
    )
    return dataclasses.replace(tiny, detector=det, tracker=trk)


def resident_bytes() -> int:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> None:
    """Collect garbage and hand freed heap pages back, so resident memory shows what is live."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


@dataclasses.dataclass(frozen=True)
class Footprint:
    resident: int
    objects: int
    tensors: int
    bank_bytes: tuple[int, ...]
    bank_capacity: tuple[int, ...]


def footprint(engine: StreamingEngine) -> Footprint:
    settle()
    live = gc.get_objects()
    # type() rather than isinstance: a weak proxy in the heap would raise on __class__
    tensors = sum(1 for o in live if issubclass(type(o), torch.Tensor))
    sessions = [engine.session(sid) for sid in engine.stream_ids]
    return Footprint(
        resident=resident_bytes(), objects=len(live), tensors=tensors,
        bank_bytes=tuple(s.memory.nbytes for s in sessions), bank_capacity=tuple(s.memory.capacity for s in sessions),
    )


def run_streams(checkpoint: str) -> dict:
    """Step the streams through warm-up and the measured window; footprints and activity as a dict."""
    logging.disable(logging.WARNING)  # the object limit logs every frame
    torch.set_num_threads(1)
    loaded = load_model(checkpoint, device="cpu")
    # few objects per stream: the cost per frame stays small and the limit is hit all the time
    video = dataclasses.replace(loaded.config.video, max_num_objects=3)
    engine = StreamingEngine(loaded, EngineOptions(evict_after_frames=10), video)
    for k in range(STREAMS):
        sid = f"cam{k}"
        engine.open_session(sid, ["red square"], detection_threshold=0.2)
        engine.add_box(sid, (8 + 4 * k, 8, 30 + 4 * k, 30))
    frames = [synthetic_frame(i, FRAME_SIZE, 10.0) for i in range(97)]  # a loop no stream repeats in step
    activity = {"objects": 0, "tracks": 0, "retracted": 0, "evicted": 0}
    tracks: set[tuple[str, int]] = set()

    def run(first: int, steps: int) -> None:
        for i in range(first, first + steps):
            out = engine.step({f"cam{k}": frames[(i + 13 * k) % len(frames)] for k in range(STREAMS)})
            for result in out.values():
                if not result.ok:
                    raise RuntimeError(result.error)
                activity["objects"] += len(result.objects)
                tracks.update((result.stream_id, o.track_id) for o in result.objects)
                activity["retracted"] += len(result.retracted_ids)
                activity["evicted"] += len(result.evicted_ids)

    run(0, WARMUP_STEPS)
    start = footprint(engine)
    activity["objects"] = 0
    half = MEASURED_STEPS // 2
    run(WARMUP_STEPS, half)
    middle = footprint(engine)
    run(WARMUP_STEPS + half, MEASURED_STEPS - half)
    end = footprint(engine)
    activity["tracks"] = len(tracks)
    return {"start": dataclasses.asdict(start), "middle": dataclasses.asdict(middle), "end": dataclasses.asdict(end),
            "activity": activity}


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "micro", seed=CHECKPOINT_SEED, config=micro_config())


@pytest.mark.slow
@pytest.mark.skipif(not STATM.exists(), reason="reads resident memory from /proc/self/statm")
def test_engine_memory_is_flat_over_thousands_of_frames(micro_checkpoint):
    repo = Path(__file__).parents[2]
    # a fixed mmap threshold: large blocks go straight back to the system when freed, instead of
    # glibc raising the threshold and keeping them in a heap that malloc_trim cannot always shrink
    env = {**os.environ, "PYTHONPATH": str(repo), "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, __file__, str(micro_checkpoint)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    start, middle, end = (Footprint(**{k: tuple(v) if isinstance(v, list) else v for k, v in report[n].items()})
                          for n in ("start", "middle", "end"))
    activity = report["activity"]

    frames = STREAMS * MEASURED_STEPS
    late_frames = STREAMS * (MEASURED_STEPS - MEASURED_STEPS // 2)
    # the streams really had objects that came and went, or flat memory proves nothing
    assert activity["objects"] > frames, activity
    assert activity["tracks"] > 20 * STREAMS and activity["retracted"] > 0, activity
    growth = end.resident - start.resident
    assert growth < RSS_BUDGET_PER_FRAME * frames, (
        f"resident memory grew {growth} B over {frames} frames ({growth / frames:.0f} B per frame)"
    )
    assert end.objects - middle.objects < COUNT_BUDGET_PER_FRAME * late_frames, (middle, end)
    assert end.tensors - middle.tensors < COUNT_BUDGET_PER_FRAME * late_frames, (middle, end)
    assert end.bank_bytes == middle.bank_bytes == start.bank_bytes, (start, middle, end)
    assert end.bank_capacity == start.bank_capacity, (start, end)


if __name__ == "__main__":
    print(json.dumps(run_streams(sys.argv[1])))
