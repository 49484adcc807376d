"""Frames per second of one stream through the engine actor, its batching rule before and after
"step as soon as every open session has a frame".

    python -m bench.bench_engine_wait                      # 60 frames, max_wait_ms 15, 3 repeats
    python -m bench.bench_engine_wait --before-rev <commit>

The "before" actor is ``pipeline/engine_actor.py`` as of ``--before-rev`` (the commit before the
change), read with ``git show`` into a temporary module and shipped to Ray by value; the "after"
actor is the current one. Nothing else differs: the tiny random checkpoint on the CPU, the same
decoded 160x120 synthetic frames, one session sent through an ``EngineLink`` with the stream
actor's window, ``max_batch`` 8. The two alternate ``--repeats`` times in the same process;
medians are reported. The first ``--skip`` frames (first-call allocations, text cache) are untimed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import ray.cloudpickle

from operators.synthetic import write_synthetic_video
from operators.video_source import open_video
from pipeline.engine_actor import EngineActor, EngineSettings
from pipeline.engine_link import EngineLink
from sam3_runtime.model import write_random_checkpoint
from sam3_runtime.video.types import EngineOptions

logger = logging.getLogger("bench.engine_wait")

BEFORE_REV = "900280a"  # the last commit whose engine actor waited max_wait_ms for a lone stream
CONCEPTS = ("red square", "green disc")
WINDOW = 4  # frames a stream actor keeps in flight (engine.max_in_flight's default)


def load_before(rev: str, root: Path):
    """The EngineActor class of ``pipeline/engine_actor.py`` at ``rev``, importable by Ray's workers."""
    source = subprocess.run(["git", "show", f"{rev}:pipeline/engine_actor.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = root / "engine_actor_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("engine_actor_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)  # workers cannot import a temporary file
    return module.EngineActor


def one_stream_fps(actor_cls, settings: EngineSettings, frames: list, skip: int) -> float:
    engine = actor_cls.remote(settings)
    try:
        ray.get(engine.ready.remote())
        link = EngineLink(engine, "cam", list(CONCEPTS), 0.3, window=WINDOW)
        link.open()
        started, done = None, 0
        for frame in frames:
            link.send(frame)
            if link.full:
                link.collect()
                done += 1
                if done == skip:
                    started = time.perf_counter()
        while link.in_flight:
            link.collect()
        seconds = time.perf_counter() - started
        link.close()
        return (len(frames) - skip) / seconds
    finally:
        ray.kill(engine)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--skip", type=int, default=5, help="untimed first frames")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-wait-ms", type=float, default=15.0)
    p.add_argument("--before-rev", default=BEFORE_REV)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        video = write_synthetic_video(root / "v.mp4", frames=args.frames, size=(160, 120), fps=10)
        frames = list(open_video(video))
        settings = EngineSettings(str(write_random_checkpoint(root / "tiny")), device="cpu", max_batch=8,
                                  max_wait_ms=args.max_wait_ms, options=EngineOptions(hotstart_mode="off"))
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            variants = {"before": load_before(args.before_rev, root), "after": EngineActor}
            fps: dict[str, list[float]] = {name: [] for name in variants}
            for r in range(args.repeats):
                for name, cls in variants.items():
                    fps[name].append(one_stream_fps(cls, settings, frames, args.skip))
                    logger.info("repeat %d %s: %.2f frames/s", r + 1, name, fps[name][-1])
        finally:
            ray.shutdown()

    before, after = statistics.median(fps["before"]), statistics.median(fps["after"])
    ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(fps["after"], fps["before"], strict=True))
    print("| max_wait_ms | before (frames/s) | after (frames/s) | after/before |")
    print("| --- | --- | --- | --- |")
    print(f"| {args.max_wait_ms:g} | {before:.2f} | {after:.2f} | **{after / before:.2f}** ({ratios}) |")


if __name__ == "__main__":
    main()
