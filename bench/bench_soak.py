"""Soak test: the memory of a long run of looping streams must be flat after warm-up.

    python -m bench.bench_soak                                  # 30 min, 4 looping streams, Kafka + Parquet
    python -m bench.bench_soak --minutes 2 --warmup-minutes 0.5 # a quick check that it works
    python -m bench.bench_soak --no-kafka --threshold 0.1

The job (tiny random checkpoint, CPU) plays ``--streams`` short synthetic videos (160x120,
10 fps, ``--video-frames`` frames) with ``loop: true``, so each stream runs for the whole
``--minutes`` on one engine session, into a Parquet sink in a temporary directory and, unless
``--no-kafka``, the embedded Kafka broker. ``run_job`` runs it with ``max_seconds`` =
``--minutes`` while a thread records, every ``--sample-seconds`` from the moment the streams
start, the resident set size (RSS; and USS, the memory only that process holds) of:

- ``driver``: this process (``run_job`` and Ray's driver side);
- ``engine``: the EngineActor process, ``streams``: the StreamActor processes (summed);
- ``broker``: the embedded Kafka broker, which keeps every message in memory by design:
  reported, not judged;
- ``ray``: Ray's own processes of this cluster (raylet, GCS, agents, idle workers): reported,
  not judged.

Processes are found among this process's descendants (so another Ray cluster on the same
machine is never counted) by their titles: Ray names an actor's worker process
``ray::EngineActor`` / ``ray::StreamActor`` (``ray::EngineActor.process`` while it runs a
method). The engine's counters (frames, steps, objects in its sessions) are sampled too.

Output: a CSV with one row per process per sample (its path is printed) and a table per group:
RSS at the end of the warm-up, at the end, the difference, and the least-squares slope after
the warm-up in MB per 10 minutes (USS likewise, for information only: a library page counts as
unique until some other process maps it, so USS jumps by tens of MB when an unrelated torch
process on the machine starts or ends). Verdict, on RSS: ``flat`` when the pipeline's
processes (driver + engine + streams) grew by less than ``--max-growth-mb`` (default 20 MB)
over the time after the warm-up, as the fitted line says (less sensitive to one noisy sample
than the end-to-end difference, which is printed as well), else ``growing``. Why 20 MB: the
allocators of six Python processes move by a few MB each without any leak, while a leak of
1 KB per frame at the ~25 frames/s a 2-core machine runs the tiny model on leaks 37 MB in 25
minutes; the verdict line also gives the fitted growth per frame. Exit status: 0 for ``flat``,
1 for ``growing``.

Workload. At the default detection threshold 0.3 each stream's session holds two objects,
steadily, and the sinks carry each stream's events and only a few track records. At 0.1
(``--threshold 0.1``) the random model starts about seven new objects per stream per frame
that the tracker sees as empty; the engine evicts them after ``--evict-after-frames`` (300 by
default, as in a job file), so its memory and step time grow for the first 300 frames of every
stream and then level off near two thousand objects per stream, far slower per frame. With
``--threshold 0.1 --hotstart off --evict-after-frames 10`` the sessions level off at about
seventy objects per stream and track records flow to both sinks: the soak that exercises
eviction and the sinks.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from operators.synthetic import write_synthetic_video
from pipeline.driver import run_job
from sam3_runtime.model import write_random_checkpoint

logger = logging.getLogger("bench.soak")

SIZE = (160, 120)
FPS = 10.0
CONCEPTS = ("red square", "green disc")
GROUPS = ("driver", "engine", "streams", "broker", "ray")
JUDGED = ("driver", "engine", "streams")
MB = 1024 * 1024

JOB = """\
name: bench-soak
model: {{checkpoint: '{checkpoint}', device: cpu}}
engine: {{replicas: 1, max_batch: {streams}, max_wait_ms: 10, hotstart: "{hotstart}", evict_after_frames: {evict}}}
watchlists:
  shapes:
{rules}
streams:
{stream_lines}
sinks:
  parquet: {{path: '{out}'}}
{kafka}metrics: {{port: null}}
"""


@dataclass
class Sample:
    t: float  # seconds since the streams started
    rss: dict[str, float] = field(default_factory=dict)  # group -> MB
    uss: dict[str, float] = field(default_factory=dict)
    frames: int | None = None
    steps: int | None = None
    objects: int | None = None


def write_job(root: Path, streams: int, video_frames: int, threshold: float, hotstart: str, kafka: bool,
              evict_after_frames: int) -> Path:
    video = write_synthetic_video(root / "loop.mp4", frames=video_frames, size=SIZE, fps=FPS)
    checkpoint = write_random_checkpoint(root / "tiny")
    rules = "\n".join(f"    - {{concept: {c}, threshold: {threshold}}}" for c in CONCEPTS)
    lines = "\n".join(f"  - {{id: cam{k}, source: '{video}', watchlist: shapes, loop: true}}" for k in range(streams))
    sink = "  kafka: {bootstrap_servers: embedded, topic: soak.tracks, events_topic: soak.events}\n" if kafka else ""
    path = root / "soak.yaml"
    path.write_text(JOB.format(checkpoint=checkpoint, streams=streams, hotstart=hotstart, evict=evict_after_frames,
                               rules=rules,
                               stream_lines=lines, out=root / "out", kafka=sink))
    return path


def classify(proc) -> str | None:
    """The group of one of this process's descendants, from its command line / process title."""
    cmd = proc.cmdline()
    title = cmd[0] if cmd else proc.name()
    if title.startswith("ray::"):
        cls = title.split()[0].split(".")[0]
        if cls == "ray::EngineActor":
            return "engine"
        if cls == "ray::StreamActor":
            return "streams"
        return "ray"
    if len(cmd) > 2 and cmd[1] == "broker" and "--listener-url" in cmd:
        return "broker"  # the embedded broker (Tansu), started by run_job in this process
    if any("ray" in part for part in cmd[:3]):
        return "ray"  # raylet, gcs_server, Ray's Python helpers
    return None


def describe(proc) -> str:
    """A short name for the CSV: the process title, or the program and its script."""
    cmd = proc.cmdline() or [proc.name()]
    if cmd[0].startswith("ray::"):
        return cmd[0].strip()
    names = [os.path.basename(cmd[0])]
    if names[0].startswith("python") and len(cmd) > 1:
        names.append(os.path.basename(next((c for c in cmd[1:] if not c.startswith("-")), cmd[1])))
    return " ".join(names)


class Sampler:
    """Samples every ``period_s`` from ``on_started`` until ``duration_s`` has passed; writes CSV rows."""

    def __init__(self, period_s: float, duration_s: float, csv_path: Path):
        import psutil  # after ``import ray``: Ray ships psutil with it

        self.psutil = psutil
        self.period_s = period_s
        self.duration_s = duration_s
        self.samples: list[Sample] = []
        self.engine_pids: set[int] = set()
        self._engine = None
        self._frames_base = self._steps_base = 0  # counts of engine incarnations before a restart
        self._last_raw = (0, 0)
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file = open(csv_path, "w", newline="")  # noqa: SIM115 -- closed in stop()
        self._csv = csv.writer(self._file)
        self._csv.writerow(["t_s", "group", "pid", "title", "rss_mb", "uss_mb", "engine_frames", "engine_steps",
                            "engine_objects"])

    def on_started(self, actors) -> None:
        engines = actors.engines
        self._engine = next(iter(engines.values()))
        try:
            self.engine_pids = set(ray.get([e.__ray_call__.remote(_pid) for e in engines.values()], timeout=30))
        except Exception as e:  # only a cross-check of the process titles
            logger.warning("could not ask the engine actor for its pid: %s", e)
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            t = time.monotonic() - start
            try:
                self._sample(t)
            except Exception:
                logger.exception("sampling failed at t=%.0f s", t)
            k += 1
            if k * self.period_s > self.duration_s - 2.0:  # the job stops at duration_s: no sample in its drain
                break
            self._stop.wait(max(0.0, start + k * self.period_s - time.monotonic()))

    def _sample(self, t: float) -> None:
        psutil = self.psutil
        sample = Sample(t=t, rss=dict.fromkeys(GROUPS, 0.0), uss=dict.fromkeys(GROUPS, 0.0))
        try:
            stats = ray.get(self._engine.stats.remote(), timeout=10)
            if stats.frames < self._last_raw[0]:  # a restarted engine counts from zero again
                self._frames_base += self._last_raw[0]
                self._steps_base += self._last_raw[1]
                logger.warning("the engine restarted before t=%.0f s", t)
            self._last_raw = (stats.frames, stats.steps)
            sample.frames, sample.steps = self._frames_base + stats.frames, self._steps_base + stats.steps
            sample.objects = stats.objects
        except Exception as e:  # an engine restarting is part of what a soak may see
            logger.warning("engine stats unavailable at t=%.0f s: %s", t, e)
        rows = [(self._me, "driver")]
        for proc in self._me.children(recursive=True):
            try:
                group = classify(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if group is not None:
                rows.append((proc, group))
        engines = {p.pid for p, g in rows if g == "engine"}
        if self.engine_pids and not self.engine_pids <= engines and not self.samples:
            logger.warning("engine actor pid %s not found by process title (found %s)", self.engine_pids, engines)
        for proc, group in rows:
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss / MB
                    uss = proc.memory_full_info().uss / MB if group != "ray" else float("nan")
                    title = describe(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            sample.rss[group] += rss
            sample.uss[group] += uss if group != "ray" else 0.0
            self._csv.writerow([f"{t:.1f}", group, proc.pid, title, f"{rss:.2f}",
                                "" if group == "ray" else f"{uss:.2f}", sample.frames, sample.steps, sample.objects])
        self._file.flush()
        self.samples.append(sample)
        logger.info("t=%5.0f s  pipeline RSS %7.1f MB (driver %.0f, engine %.0f, streams %.0f)  broker %.0f MB  "
                    "frames %s  objects %s", t, sum(sample.rss[g] for g in JUDGED), sample.rss["driver"],
                    sample.rss["engine"], sample.rss["streams"], sample.rss["broker"], sample.frames, sample.objects)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._file.close()


def _pid(_actor) -> int:
    import os as actor_os

    return actor_os.getpid()


def slope_per_10min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per 10 minutes."""
    if len(points) < 2:
        return float("nan")
    ts = [t for t, _ in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(v for _, v in points)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return float("nan")
    return 600.0 * sum((t - mt) * (v - mv) for t, v in points) / var


def summarize(samples: list[Sample], warmup_s: float, max_growth_mb: float, streams: int) -> bool:
    """Print the per-group table and the verdict; True when flat."""
    warm = [s for s in samples if s.t <= warmup_s + 0.5]  # sample times run a few ms late
    if not warm or len(samples) < 3:
        raise RuntimeError(f"too few samples ({len(samples)}) for a verdict: run longer or sample more often")
    w = warm[-1]
    after = [s for s in samples if s.t >= w.t]
    end = samples[-1]
    span_s = end.t - w.t

    def series(s: Sample, kind: str, group: str) -> float:
        values = s.rss if kind == "rss" else s.uss
        return sum(values[g] for g in JUDGED) if group == "pipeline" else values[group]

    print("| group | RSS end of warm-up (MB) | RSS end (MB) | RSS diff (MB) | RSS slope (MB/10 min) "
          "| USS diff (MB) | USS slope (MB/10 min) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    fitted = {}
    for group in (*JUDGED, "pipeline", "broker", "ray"):
        rss = [(s.t, series(s, "rss", group)) for s in after]
        uss = [(s.t, series(s, "uss", group)) for s in after]
        slope = slope_per_10min(rss)
        fitted[group] = slope * span_s / 600.0
        uss_cols = ("n/a", "n/a") if group == "ray" else (f"{uss[-1][1] - uss[0][1]:+.1f}", f"{slope_per_10min(uss):+.2f}")
        label = {"pipeline": "**pipeline (driver+engine+streams)**", "streams": f"streams ({streams})",
                 "broker": "broker (not judged)", "ray": "ray (not judged)"}.get(group, group)
        print(f"| {label} | {rss[0][1]:.1f} | {rss[-1][1]:.1f} | {rss[-1][1] - rss[0][1]:+.1f} | {slope:+.2f} "
              f"| {uss_cols[0]} | {uss_cols[1]} |")

    frames = end.frames or 0
    frames_after = frames - (w.frames or 0)
    growth = fitted["pipeline"]
    logger.info("engine: %d frames in %.0f s (%.2f frames/s); after warm-up %d frames in %.0f s (%.2f frames/s); "
                "objects in its sessions: %s at the end of warm-up, %s at the end", frames, end.t,
                frames / end.t if end.t else float("nan"), frames_after, span_s,
                frames_after / span_s if span_s else float("nan"), w.objects, end.objects)
    per_frame = f"{growth * MB / frames_after:.0f} B per frame" if frames_after else "n/a"
    flat = growth < max_growth_mb
    verdict = "flat" if flat else "growing"
    print(f"verdict: {verdict} (pipeline processes after warm-up: fitted growth {growth:+.1f} MB over "
          f"{span_s / 60:.1f} min = {per_frame}, end minus warm-up {series(end, 'rss', 'pipeline') - series(w, 'rss', 'pipeline'):+.1f} MB; "
          f"limit {max_growth_mb:g} MB)")
    return flat


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--warmup-minutes", type=float, default=5.0)
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--video-frames", type=int, default=40, help="frames of the looping video")
    p.add_argument("--kafka", action=argparse.BooleanOptionalAction, default=True,
                   help="Kafka sink on the embedded broker (besides Parquet)")
    p.add_argument("--threshold", type=float, default=0.3, help="detection threshold (see 'Workload' above)")
    p.add_argument("--hotstart", choices=["tentative", "off"], default="tentative")
    p.add_argument("--evict-after-frames", type=int, default=300,
                   help="the engine drops objects absent this many frames (see 'Workload' above)")
    p.add_argument("--max-growth-mb", type=float, default=20.0, help="verdict limit for the pipeline processes")
    p.add_argument("--csv", type=Path, help="where the samples go (default: a new file in the temp directory)")
    p.add_argument("--actor-logs", action="store_true", help="show the actors' log lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("sam3_runtime", "operators", "pipeline", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not 0 <= args.warmup_minutes < args.minutes:
        p.error("need 0 <= --warmup-minutes < --minutes")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    csv_path = args.csv or Path(tempfile.gettempdir()) / f"bench_soak_{stamp}.csv"
    duration_s = args.minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        job = write_job(Path(tmp), args.streams, args.video_frames, args.threshold, args.hotstart, args.kafka,
                        args.evict_after_frames)
        ray.init(num_cpus=max(os.cpu_count() or 1, args.streams + 2), include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=args.actor_logs)
        sampler = Sampler(args.sample_seconds, duration_s, csv_path)
        try:
            result = run_job(str(job), max_seconds=duration_s, show_progress=False, on_started=sampler.on_started)
        finally:
            sampler.stop()
            ray.shutdown()
    states = {sid: s.state.value for sid, s in result.streams.items()}
    logger.info("job exit code %d, streams %s; samples in %s", result.exit_code, states, csv_path)
    logger.info("%d streams looping a %d-frame video, threshold %g, hotstart %s, evict after %d frames, sinks "
                "parquet%s; %.1f min, warm-up %.1f min, a sample every %g s", args.streams, args.video_frames,
                args.threshold, args.hotstart, args.evict_after_frames, "+kafka (embedded)" if args.kafka else "",
                args.minutes, args.warmup_minutes, args.sample_seconds)
    print(f"samples: {csv_path}")
    flat = summarize(sampler.samples, args.warmup_minutes * 60.0, args.max_growth_mb, args.streams)
    raise SystemExit(0 if flat else 1)


if __name__ == "__main__":
    main()
