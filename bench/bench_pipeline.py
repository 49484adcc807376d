"""End-to-end frames per second of the Ray pipeline against the bare engine loop on the same frames.

    python -m bench.bench_pipeline                        # 4 streams x 60 frames, 3 repeats, CPU
    python -m bench.bench_pipeline --repeats 1 --frames 30
    python -m bench.bench_pipeline --kafka                # also publish to the embedded Kafka broker
    python -m bench.bench_pipeline --threshold 0.1 --frames 30   # the end-to-end test's threshold

Both sides use the tiny random checkpoint on the CPU, ``--streams`` synthetic 160x120 videos
at 10 fps (moving coloured shapes), the concepts "red square" and "green disc" at one
detection threshold (``--threshold``), and the same ``EngineOptions`` (``--hotstart``).

- bare: in this process, one ``StreamingEngine`` with one session per stream. Each round
  decodes the next frame of every stream with ``operators.sources.stream_frames`` (the
  decoder the stream actors use; decoding is inside the timed loop, serially, as part of the
  work; its share is reported) and advances all sessions with one ``step`` (a batch of
  ``--streams`` frames, what the job's ``max_batch`` allows). The engine is warmed up first
  on separate sessions, which are then closed.
- pipeline: ``run_job`` on a job file (one engine replica, ``max_batch`` = streams,
  ``max_wait_ms`` 10, a Parquet sink in a temporary directory, Kafka on the embedded broker
  with ``--kafka``). A thread polls the engine actor's counters every ``--poll-ms`` (every 2 ms
  over the last two rounds, as the job's actors go away soon after its last frame; the stream
  actors' every fourth poll); a frame count is reached at the midpoint of the two polls around
  it, so the timing error is at most half a poll period at either end (polling every 10 ms
  took a few percent off the engine actor's speed on 2 cores). Ray start-up, actor creation,
  model loading and the Kafka broker's start are outside the window.

Both sides drop their first ``--skip`` rounds (skip x streams engine frames: first-call
allocations, the text-feature cache, the first memory frames) and time from the moment the
engine has finished ``skip x streams`` frames to the moment it has finished all of them. The
stream actors start one after another, so the first streams run ahead of the last and the
run ends with a tail of partial batches; the ``steady`` figure leaves that out: engine frames
per second from the moment every stream has ``--skip`` frames back until the first stream
has all of its frames back (every batch full).

The two sides alternate ``--repeats`` times; medians are reported. The engine actor's torch
intra-op thread count is read from the actor itself and the bare loop runs with the same
count (Ray gives a worker ``OMP_NUM_THREADS`` = its CPUs, 1 for an actor that asks for none;
``--threads`` sets it for every Ray worker and the bare loop). Target: pipeline/bare >= 0.8.

Printed: one line per run, then a markdown table (header and one row for bench/RESULTS.md).
Besides frames per second it gives each side's time inside ``step`` per frame and the share
of the pipeline's window the engine actor spent stepping ("actor busy"): a low share means
the pipeline leaves the engine waiting for frames; a higher step time in the actor means its
steps themselves ran slower (CPU contention, partial batches).

Workload. The random model's detection scores sit around 0.1-0.3. At threshold 0.3 each
stream's session holds two objects from its first frames on and the cost per frame is
constant (the default). At 0.1 (the end-to-end test's threshold, which publishes track
records) every frame starts about seven new objects per stream that the tracker then sees as
empty and that stay until ``evict_after_frames`` (300) frames have passed, so the step cost
grows with the frame index (about 1 s per frame by frame 30, 2.5 s by frame 60 on 2 CPU
cores): both sides still do the same work, but the numbers depend on ``--frames`` and a
default run would take half an hour.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from operators.resume_point import StreamState
from operators.sources import stream_frames
from operators.synthetic import write_synthetic_video
from pipeline.driver import run_job
from sam3_runtime.model import load_model, write_random_checkpoint
from sam3_runtime.video.engine import StreamingEngine
from sam3_runtime.video.types import EngineOptions

logger = logging.getLogger("bench.pipeline")

SIZE = (160, 120)
FPS = 10.0
CONCEPTS = ("red square", "green disc")
STREAM_POLL_EVERY = 4  # stream actors are polled on every fourth engine poll

JOB = """\
name: bench-pipeline
model: {{checkpoint: '{checkpoint}', device: cpu}}
engine: {{replicas: 1, max_batch: {max_batch}, max_wait_ms: {max_wait_ms}, hotstart: "{hotstart}"}}
watchlists:
  shapes:
{rules}
streams:
{streams}
sinks:
  parquet: {{path: '{out}'}}
{kafka}metrics: {{port: null}}
"""


@dataclass
class Measurement:
    frames: int  # engine frames inside the timed window
    seconds: float
    steps: int  # engine steps inside the window (frames / steps = mean batch)
    step_s: float  # time spent inside ``StreamingEngine.step`` within the window
    decode_s: float = 0.0  # bare loop only: time spent decoding inside the window
    records: int = 0  # pipeline only: track observations published (whole run)
    steady: Measurement | None = None  # pipeline only: the full-batch part of the window

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def ms_per_frame(self) -> float:
        return 1e3 * self.seconds / self.frames

    @property
    def step_ms_per_frame(self) -> float:
        return 1e3 * self.step_s / self.frames

    @property
    def busy(self) -> float:
        """The share of the window the engine spent stepping."""
        return self.step_s / self.seconds

    @property
    def batch(self) -> float:
        return self.frames / self.steps if self.steps else float("nan")


def make_media(root: Path, streams: int, frames: int) -> tuple[list[Path], Path]:
    videos = [write_synthetic_video(root / f"cam{k}.mp4", frames=frames, size=SIZE, fps=FPS) for k in range(streams)]
    return videos, write_random_checkpoint(root / "tiny")


def write_job(path: Path, videos: list[Path], checkpoint: Path, out: Path, *, hotstart: str, kafka: bool,
              max_wait_ms: float, threshold: float) -> Path:
    rules = "\n".join(f"    - {{concept: {c}, threshold: {threshold}}}" for c in CONCEPTS)
    streams = "\n".join(f"  - {{id: cam{k}, source: '{v}', watchlist: shapes}}" for k, v in enumerate(videos))
    sink = "  kafka: {bootstrap_servers: embedded, topic: bench.tracks, events_topic: bench.events}\n" if kafka else ""
    path.write_text(JOB.format(checkpoint=checkpoint, max_batch=len(videos), max_wait_ms=max_wait_ms,
                               hotstart=hotstart, rules=rules, streams=streams, out=out, kafka=sink))
    return path


# -- bare engine loop ----------------------------------------------------------------------------

def warm_up(engine: StreamingEngine, videos: list[Path], rounds: int, threshold: float) -> None:
    """A few batched steps on throw-away sessions, so that the timed sessions start warm."""
    frames = []
    for v in videos:
        source = stream_frames(str(v))
        frames.append([f.image for f in itertools.islice(source, rounds)])
        source.close()
    ids = [f"warmup{k}" for k in range(len(videos))]
    for sid in ids:
        engine.open_session(sid, CONCEPTS, detection_threshold=threshold)
    for t in range(rounds):
        engine.step({sid: f[t % len(f)] for sid, f in zip(ids, frames, strict=True)})
    for sid in ids:
        engine.close_session(sid)


def run_bare(engine: StreamingEngine, videos: list[Path], skip: int, threshold: float, tag: str) -> Measurement:
    ids = [f"{tag}-cam{k}" for k in range(len(videos))]
    for sid in ids:
        engine.open_session(sid, CONCEPTS, detection_threshold=threshold)
    sources = [stream_frames(str(v)) for v in videos]
    done = 0  # rounds finished
    decode_s = step_s = 0.0
    window_start = end = time.perf_counter()
    try:
        while True:
            t0 = time.perf_counter()
            batch = {}
            for sid, source in zip(ids, sources, strict=True):
                frame = next(source, None)
                if frame is not None:
                    batch[sid] = frame.image
            if not batch:
                break
            if len(batch) != len(ids):
                raise RuntimeError("the synthetic videos have different lengths")
            if done >= skip:
                decode_s += time.perf_counter() - t0
            t1 = time.perf_counter()
            results = engine.step(batch)
            if done >= skip:
                step_s += time.perf_counter() - t1
            if any(r.error for r in results.values()):
                raise RuntimeError(f"engine refused a frame: {[r.error for r in results.values() if r.error]}")
            done += 1
            end = time.perf_counter()
            if done == skip:
                window_start = end
    finally:
        for source in sources:
            source.close()
        for sid in ids:
            engine.close_session(sid)
    rounds = done - skip
    return Measurement(frames=rounds * len(ids), seconds=end - window_start, steps=rounds, step_s=step_s,
                       decode_s=decode_s)


# -- pipeline ------------------------------------------------------------------------------------

class JobWatch:
    """Polls the job's counters from a thread: the engine's (time, frames, steps, seconds in
    ``step``) every poll,
    the streams' (time, fewest, most frames processed) every ``STREAM_POLL_EVERY`` polls."""

    def __init__(self, poll_s: float, total: int, streams: int):
        self.poll_s = poll_s
        # near the end, poll back to back: the job's actors are gone soon after its last frame
        self.fast_from = total - 2 * streams
        self.engine: list[tuple[float, int, int, float]] = []
        self.streams: list[tuple[float, int, int]] = []
        self.threads: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_started(self, actors) -> None:
        (engine,) = actors.engines.values()
        streams = list(actors.streams.values())
        self.threads = ray.get(engine.ready.remote())["torch_threads"]
        self._thread = threading.Thread(target=self._poll, args=(engine, streams), name="job-watch", daemon=True)
        self._thread.start()

    def _poll(self, engine, streams: list) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                break
            try:
                stats = ray.get(engine.stats.remote(), timeout=5.0)
                self.engine.append((time.perf_counter(), stats.frames, stats.steps, stats.step_seconds_sum))
                if streams and n % STREAM_POLL_EVERY == 0:
                    done = [s.counters.frames_processed for s in ray.get([a.get_stats.remote() for a in streams], timeout=5.0)]
                    self.streams.append((time.perf_counter(), min(done), max(done)))
            except Exception:  # the job ended and its actors are gone
                break
            self._stop.wait(self.poll_s if stats.frames < self.fast_from else 0.002)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def reached(self, frames: int) -> tuple[float, int, float]:
        """When the engine's frame count first reached ``frames`` (midpoint of the two polls
        around it), and its step count and seconds in ``step`` then."""
        for before, (t_after, f_after, steps, step_s) in itertools.pairwise(self.engine):
            if before[1] < frames <= f_after:
                return (before[0] + t_after) / 2, steps, step_s
        raise RuntimeError(f"the engine never went from below {frames} frames to {frames} between two polls "
                           f"(samples: {self.engine[:3]} ... {self.engine[-3:]}); lower --poll-ms or raise --skip")

    def steady(self, skip: int, frames_per_stream: int) -> Measurement | None:
        """Engine throughput while every stream is past ``skip`` frames and none has finished."""
        starts = [t for t, fewest, _ in self.streams if fewest >= skip]
        ends = [t for t, _, most in self.streams if most < frames_per_stream]
        if not starts or not ends:
            return None
        first = next((s for s in self.engine if s[0] >= starts[0]), None)
        last = next((s for s in reversed(self.engine) if s[0] <= ends[-1]), None)
        if first is None or last is None or last[1] <= first[1]:
            return None
        return Measurement(frames=last[1] - first[1], seconds=last[0] - first[0], steps=last[2] - first[2],
                           step_s=last[3] - first[3])


def run_pipeline(job_path: Path, streams: int, frames: int, skip: int, poll_s: float) -> tuple[Measurement, int | None]:
    total = streams * frames
    watch = JobWatch(poll_s, total, streams)
    try:
        result = run_job(str(job_path), show_progress=False, on_started=watch.on_started)
    finally:
        watch.stop()
    bad = {sid: s.error or s.state.value for sid, s in result.streams.items() if s.state is not StreamState.FINISHED}
    if result.exit_code != 0 or bad:
        raise RuntimeError(f"pipeline run failed (exit {result.exit_code}): {bad}")
    processed = sum(s.counters.frames_processed for s in result.streams.values())
    if processed != total or not watch.engine or watch.engine[-1][1] != total:
        last = watch.engine[-1][1] if watch.engine else None
        raise RuntimeError(f"expected {total} frames; streams processed {processed}, the last engine poll counted "
                           f"{last} (the job ended before the next poll: try a smaller --poll-ms)")
    t0, steps0, step_s0 = watch.reached(skip * streams)
    t1, steps1, step_s1 = watch.reached(total)
    records = sum(s.counters.records for s in result.streams.values())
    return Measurement(frames=total - skip * streams, seconds=t1 - t0, steps=steps1 - steps0, step_s=step_s1 - step_s0,
                       records=records, steady=watch.steady(skip, frames)), watch.threads


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--frames", type=int, default=60, help="frames per stream")
    p.add_argument("--skip", type=int, default=5, help="untimed first rounds (frames per stream), both sides; >= 1")
    p.add_argument("--repeats", type=int, default=3, help="bare/pipeline pairs; medians are reported")
    p.add_argument("--threshold", type=float, default=0.3,
                   help="detection threshold of both concepts (see 'Workload' above)")
    p.add_argument("--hotstart", choices=["tentative", "off"], default="off",
                   help="engine hot-start mode on both sides (off: tracks are published from their first frame)")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--kafka", action="store_true", help="add a Kafka sink on the embedded broker")
    p.add_argument("--warmup-rounds", type=int, default=3, help="bare loop: steps on throw-away sessions first")
    p.add_argument("--poll-ms", type=float, default=50.0,
                   help="pipeline: engine counter poll period (2 ms over the last two rounds)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads on both sides (sets OMP_NUM_THREADS for the Ray workers); "
                        "default: what Ray gives the engine actor")
    p.add_argument("--actor-logs", action="store_true", help="show the actors' log lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("sam3_runtime", "operators", "pipeline"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.skip < 1 or args.frames <= args.skip:
        p.error("need 1 <= --skip < --frames")

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        videos, checkpoint = make_media(root, args.streams, args.frames)
        env = {"env_vars": {"OMP_NUM_THREADS": str(args.threads)}} if args.threads else None
        ray.init(num_cpus=max(os.cpu_count() or 1, args.streams + 2), include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=args.actor_logs, runtime_env=env)
        try:
            rows = measure(args, root, videos, checkpoint)
        finally:
            ray.shutdown()
    report(args, rows)


def measure(args, root: Path, videos: list[Path], checkpoint: Path) -> dict:
    loaded = load_model(str(checkpoint), device="cpu")
    engine = StreamingEngine(loaded, EngineOptions(hotstart_mode=args.hotstart))
    bare: list[Measurement] = []
    piped: list[Measurement] = []
    engine_threads: set[int] = set()
    bare_threads = args.threads
    for r in range(args.repeats):
        job = write_job(root / f"job{r}.yaml", videos, checkpoint, root / f"out{r}", hotstart=args.hotstart,
                        kafka=args.kafka, max_wait_ms=args.max_wait_ms, threshold=args.threshold)
        # the first pipeline run tells which thread count Ray gives the engine actor
        order = ("pipeline", "bare") if r == 0 and bare_threads is None else ("bare", "pipeline")
        for side in order:
            if side == "bare":
                torch.set_num_threads(bare_threads or torch.get_num_threads())
                if not bare:
                    warm_up(engine, videos, args.warmup_rounds, args.threshold)
                m = run_bare(engine, videos, args.skip, args.threshold, tag=f"r{r}")
                bare.append(m)
                logger.info("repeat %d bare:     %7.2f frames/s (%d frames in %.2f s, step %.1f ms/frame, decode "
                            "%.1f%%, %d threads)", r + 1, m.fps, m.frames, m.seconds, m.step_ms_per_frame,
                            100 * m.decode_s / m.seconds, torch.get_num_threads())
            else:
                m, threads = run_pipeline(job, args.streams, args.frames, args.skip, args.poll_ms / 1e3)
                piped.append(m)
                if threads is not None:
                    engine_threads.add(threads)
                    bare_threads = bare_threads or threads
                steady = f"{m.steady.fps:.2f} frames/s over {m.steady.frames} frames" if m.steady else "n/a"
                logger.info("repeat %d pipeline: %7.2f frames/s (%d frames in %.2f s, mean batch %.2f, step "
                            "%.1f ms/frame, engine busy %.0f%%; steady %s; engine threads %s; %d track records)", r + 1,
                            m.fps, m.frames, m.seconds, m.batch, m.step_ms_per_frame, 100 * m.busy, steady, threads,
                            m.records)
    if engine_threads and engine_threads != {bare_threads}:
        logger.warning("engine actor threads %s differ from the bare loop's %d", sorted(engine_threads), bare_threads)
    return {"bare": bare, "pipeline": piped, "bare_threads": bare_threads, "engine_threads": sorted(engine_threads)}


def report(args, rows: dict) -> None:
    bare, piped = rows["bare"], rows["pipeline"]
    bare_fps = statistics.median(m.fps for m in bare)
    pipe_fps = statistics.median(m.fps for m in piped)
    steadies = [m.steady.fps for m in piped if m.steady is not None]
    steady_fps = statistics.median(steadies) if steadies else float("nan")
    ratios = [p.fps / b.fps for b, p in zip(bare, piped, strict=True)]
    engine_threads = ",".join(map(str, rows["engine_threads"])) or "?"
    logger.info("%d streams x %d frames (%dx%d, %.0f fps), first %d rounds untimed, threshold %g, hotstart %s, "
                "sinks parquet%s; torch %s, intra-op threads: bare loop %s, engine actor %s; %d CPUs",
                args.streams, args.frames, SIZE[0], SIZE[1], FPS, args.skip, args.threshold, args.hotstart,
                "+kafka" if args.kafka else "", torch.__version__, rows["bare_threads"], engine_threads,
                os.cpu_count() or 0)
    logger.info("pipeline/bare per repeat: %s; bare loop decode %.2f ms/frame", ", ".join(f"{x:.2f}" for x in ratios),
                statistics.median(1e3 * m.decode_s / m.frames for m in bare))
    print("| streams x frames | threads bare/engine | bare (frames/s) | pipeline (frames/s) | pipeline/bare "
          "| steady pipeline/bare | bare (ms/frame) | pipeline (ms/frame) | step bare/actor (ms/frame) "
          "| actor busy | pipeline mean batch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.streams} x {args.frames}{' +kafka' if args.kafka else ''} | {rows['bare_threads']}/{engine_threads} "
          f"| {bare_fps:.2f} | {pipe_fps:.2f} | {pipe_fps / bare_fps:.2f} | {steady_fps / bare_fps:.2f} "
          f"| {statistics.median(m.ms_per_frame for m in bare):.1f} "
          f"| {statistics.median(m.ms_per_frame for m in piped):.1f} "
          f"| {statistics.median(m.step_ms_per_frame for m in bare):.1f}/"
          f"{statistics.median(m.step_ms_per_frame for m in piped):.1f} "
          f"| {100 * statistics.median(m.busy for m in piped):.0f}% "
          f"| {statistics.median(m.batch for m in piped):.2f} |")


if __name__ == "__main__":
    main()
