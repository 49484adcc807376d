"""Archive index throughput: files/s and frames/s with 1 and 2 engines, batch fill, and the cost of a
re-run with nothing to do.

    python -m bench.bench_index                       # 16 files x 30 frames, 1 then 2 engines, 1,000-file re-run
    python -m bench.bench_index --files 8 --frames 20 --repeats 1

Workload: ``--files`` synthetic 160x120 videos at 10 fps (moving coloured shapes), the tiny random
checkpoint on the CPU, one concept at ``--threshold`` (0.3: a constant cost per frame, see
bench/bench_pipeline.py's "Workload"), a local dataset directory (fresh for every run).

- Throughput: ``run_index`` in this process on a local Ray of ``--cpus`` CPUs, with 1 and then 2
  engines (``engine.num_cpus: 1``: Ray gives each engine actor ``OMP_NUM_THREADS=1``, and the
  torch thread count the engine reports is printed), ``max_batch`` ``--max-batch`` and the default
  ``files_in_flight`` (2 x ``max_batch`` per engine). The window runs from the moment every engine
  and worker is ready (``on_started``; Ray start-up and model loading are outside it) to the end
  of ``run_index`` (the last catalog rows written). The 1-engine run is the reference of the
  2-engine one: ratio = 2-engine files/s / 1-engine files/s. The two alternate ``--repeats`` times;
  medians are reported.
- Batch fill: each engine's ``EngineStats`` (frames / steps over the run, read every 0.2 s while
  it lives) divided by ``max_batch``, averaged over the engines. Engine busy: the share of the
  window each engine spent inside ``step`` (its ``step_seconds_sum``), averaged: below 1, the
  engine waited for frames (decoding and bookkeeping in the workers, Ray's calls, other load).
- Re-run overhead: a directory of ``--catalog-files`` small files and a catalog that lists every
  one of them as done (written with ``Catalog.append`` in 10 parts, as 10 earlier runs would), then
  ``run_index`` on it: list, read the catalog, plan, nothing to do. Timed ``--repeats`` times (median);
  it must not start Ray, which the script checks.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ray

from operators.index_tables import DONE
from operators.storage import resolve
from operators.synthetic import write_synthetic_video
from pipeline.index.catalog import Catalog, catalog_row, plan_work
from pipeline.index.inputs import list_archive
from pipeline.index.run import run_index
from pipeline.jobspec import parse_job
from sam3_runtime.model import write_random_checkpoint

logger = logging.getLogger("bench_index")

JOB = """
name: {name}
model: {{checkpoint: {checkpoint}, device: cpu}}
engine: {{replicas: {engines}, num_cpus: 1, max_batch: {max_batch}, max_wait_ms: 10, hotstart: "off"}}
watchlists:
  shapes:
    - {{concept: red square, threshold: {threshold}}}
index: {{sources: ["{sources}"], out: "{out}", watchlist: shapes}}
"""


def _job(args, checkpoint: Path, sources: str, out: Path, engines: int):
    return parse_job(JOB.format(name=f"bench{engines}", checkpoint=checkpoint, engines=engines,
                                max_batch=args.max_batch, threshold=args.threshold, sources=sources, out=out))


class _EngineStats:
    """Polls the run's engine actors' stats (found by name once the run started) until stopped."""

    def __init__(self, prefix: str):
        self.prefix, self.latest, self.threads = prefix, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self, _workers) -> None:
        names = ray.util.list_named_actors()  # engines: <job>-<run id>-engine-<i>; workers: ...-index-engine-<i>
        self.engines = {n: ray.get_actor(n) for n in names if n.startswith(self.prefix) and "-index-" not in n}
        self.threads = {n: ray.get(h.ready.remote())["torch_threads"] for n, h in self.engines.items()}
        self.started = time.perf_counter()
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for name, handle in self.engines.items():
                try:
                    self.latest[name] = ray.get(handle.stats.remote(), timeout=1.0)
                except Exception:  # noqa: BLE001 - the run ended and killed it: the last snapshot stands
                    continue
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def busy(self, seconds: float) -> float:
        """The engines' share of the window spent inside ``step`` (mean over engines)."""
        shares = [s.step_seconds_sum / seconds for s in self.latest.values()]
        return statistics.mean(shares) if shares else float("nan")

    def fill(self, max_batch: int) -> float:
        fills = [s.frames / s.steps / max_batch for s in self.latest.values() if s.steps]
        return statistics.mean(fills) if fills else float("nan")


def throughput(args, root: Path, checkpoint: Path, engines: int, attempt: int) -> dict:
    out = root / f"ds-{engines}-{attempt}"
    job = _job(args, checkpoint, str(root / "videos") + "/", out, engines)
    stats = _EngineStats(f"{job.name}-")
    result = run_index(job, show_progress=False, on_started=stats.start)
    ended = time.perf_counter()
    stats.stop()
    if result.done != args.files:
        raise RuntimeError(f"{engines} engine(s): {result.done} of {args.files} files done: {result.failures}")
    seconds = ended - stats.started
    catalog = Catalog.load(resolve(out))
    frames = sum(catalog.latest(uri)["frames"] for uri in catalog.uris())
    row = {"engines": engines, "seconds": seconds, "files_s": args.files / seconds, "frames_s": frames / seconds,
           "fill": stats.fill(args.max_batch), "busy": stats.busy(seconds), "threads": sorted(set(stats.threads.values()))}
    logger.info("%d engine(s): %.1f s, %.2f files/s, %.1f frames/s, batch fill %.2f, engine busy %.2f, torch threads "
                "%s", engines, seconds, row["files_s"], row["frames_s"], row["fill"], row["busy"], row["threads"])
    return row


def rerun_overhead(args, root: Path, checkpoint: Path) -> dict:
    videos = root / "many"
    videos.mkdir()
    for i in range(args.catalog_files):
        (videos / f"v{i:04d}.mp4").write_bytes(b"\x00" * (64 + i % 7))  # never decoded: the catalog says done
    out = root / "ds-many"
    job = _job(args, checkpoint, str(videos) + "/", out, 1)
    files = list_archive(job.index.sources)
    catalog = Catalog.load(resolve(out))
    plan = plan_work(files, catalog, ["red square"], str(job.model.checkpoint))
    rows = [catalog_row(item, status=DONE, error=None, duration_s=3.0, frames=30, fps=10.0,
                        checkpoint=str(job.model.checkpoint), run_id="seed", processing_s=1.0, next_track_id=2,
                        parts=(f"part-{i}",)) for i, item in enumerate(plan.items)]
    step = max(1, len(rows) // 10)
    for start in range(0, len(rows), step):
        catalog.append(rows[start:start + step], f"seed{start // step}")
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = run_index(job, show_progress=False)
        times.append(time.perf_counter() - started)
        if result.up_to_date != args.catalog_files or result.done or ray.is_initialized():
            raise RuntimeError(f"a re-run with nothing to do did work or started Ray: {result}")
    logger.info("re-run, nothing to do, %d files: median %.3f s (%s)", args.catalog_files, statistics.median(times),
                ", ".join(f"{t:.3f}" for t in times))
    return {"files": args.catalog_files, "seconds": statistics.median(times)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--frames", type=int, default=30, help="frames per file")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (2 engines x 1 CPU need 2)")
    p.add_argument("--catalog-files", type=int, default=1000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("sam3_runtime", "operators", "pipeline"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp)
        checkpoint = write_random_checkpoint(root / "tiny")
        rerun = rerun_overhead(args, root, checkpoint)  # first: Ray must not be running yet
        (root / "videos").mkdir()
        for i in range(args.files):
            write_synthetic_video(root / "videos" / f"v{i:02d}.mp4", frames=args.frames, size=(160, 120), fps=10)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            runs = {1: [], 2: []}
            for attempt in range(args.repeats):
                for engines in (1, 2):
                    runs[engines].append(throughput(args, root, checkpoint, engines, attempt))
        finally:
            ray.shutdown()
    report(args, runs, rerun)


def report(args, runs: dict[int, list[dict]], rerun: dict) -> None:
    med = {e: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "files_s", "frames_s", "fill", "busy")}
           for e, rs in runs.items()}
    load = os.getloadavg()
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{args.files} files x {args.frames} frames, max_batch {args.max_batch}, {args.repeats} repeat(s)\n")
    print("| engines | window (s) | files/s | frames/s | batch fill | engine busy | vs 1 engine |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for engines, m in med.items():
        ratio = m["files_s"] / med[1]["files_s"]
        print(f"| {engines} | {m['seconds']:.1f} | {m['files_s']:.2f} | {m['frames_s']:.1f} | {m['fill']:.2f} | "
              f"{m['busy']:.2f} | "
              f"{ratio:.2f} |")
    print(f"\nre-run with nothing to do, {rerun['files']} files in the catalog: {rerun['seconds']:.3f} s (median)")


if __name__ == "__main__":
    main()
