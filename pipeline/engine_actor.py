"""EngineActor: one streaming engine per GPU, batching frames of many streams into one step.

Streams call ``process`` with one frame at a time (they may keep a few frames in flight). Each
frame carries its sequence number in the stream's session, because an async Ray actor may start
one caller's calls out of order; frames are released to the batcher strictly in sequence. A step
starts as soon as every open session has a frame released, or ``max_batch`` distinct streams
have one, or ``max_wait_ms`` after the batcher began waiting with a frame queued (a session
that is open but idle, or whose next frame is missing, delays the others at most that long).
The step runs ``StreamingEngine.step`` in a worker thread (the event loop stays free to accept
more requests) on one frame per stream and answers each caller with its stream's
``FrameResult``. A stream's frames are always stepped in sequence order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import ray

from pipeline.jobspec import JobSpec, TrackingSpec
from pipeline.jobspec.engine import DEFAULT_MAX_OBJECTS_PER_STREAM
from sam3_runtime.config import VideoConfig
from sam3_runtime.video.types import EngineOptions

logger = logging.getLogger(__name__)

# Histogram bucket bounds shared with the driver's Prometheus exporter.
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class EngineSettings:
    """Everything an engine actor is built from, passed whole so no job setting is lost on the way."""

    checkpoint: str  # hub repo id | local dir | .pt/.safetensors file
    device: str = "auto"
    dtype: str = "auto"
    max_batch: int = 8  # streams stepped together at most
    max_wait_ms: float = 15.0  # how long a step waits for more streams to join
    options: EngineOptions = field(default_factory=EngineOptions)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)  # applied over the checkpoint's heuristics
    max_objects_per_stream: int = DEFAULT_MAX_OBJECTS_PER_STREAM  # the video config's max_num_objects
    compile: bool = False  # torch.compile the backbone blocks and the tracker step (sam3_runtime/compile.py)

    @classmethod
    def from_job(cls, job: JobSpec) -> EngineSettings:
        return cls(checkpoint=str(job.model.checkpoint), device=job.model.device, dtype=job.model.dtype,
                   max_batch=job.engine.max_batch, max_wait_ms=job.engine.max_wait_ms,
                   options=job.engine.engine_options(), tracking=job.engine.tracking,
                   max_objects_per_stream=job.engine.objects_per_stream, compile=job.engine.compile)

    def video(self, checkpoint: VideoConfig) -> VideoConfig:
        """The video heuristics the engine runs: ``checkpoint``'s with this job's tracking keys and object cap."""
        return dataclasses.replace(self.tracking.apply(checkpoint), max_num_objects=self.max_objects_per_stream)


@dataclass
class EngineStats:
    """Cumulative counters the driver turns into metrics; histograms as per-bucket counts."""

    steps: int = 0
    frames: int = 0
    objects: int = 0
    step_seconds_sum: float = 0.0
    step_seconds_buckets: list[int] = field(default_factory=lambda: [0] * (len(STEP_SECONDS_BUCKETS) + 1))
    batch_size_buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_SIZE_BUCKETS) + 1))
    streams: int = 0
    started: float = 0.0  # time.time() the actor was built: a new value after Ray restarted it
    # torch's CUDA caching allocator, read on every stats() call; None on CPU (nothing to report)
    gpu_memory_allocated_bytes: int | None = None
    gpu_memory_reserved_bytes: int | None = None
    # per stream: new detections dropped at max_objects_per_stream since this actor started (all its sessions)
    dropped_detections: dict[str, int] = field(default_factory=dict)

    def observe(self, batch: int, seconds: float, objects: int) -> None:
        self.steps += 1
        self.frames += batch
        self.objects = objects
        self.step_seconds_sum += seconds
        self.step_seconds_buckets[_bucket(STEP_SECONDS_BUCKETS, seconds)] += 1
        self.batch_size_buckets[_bucket(BATCH_SIZE_BUCKETS, batch)] += 1


def _bucket(bounds, value) -> int:
    return next((i for i, b in enumerate(bounds) if value <= b), len(bounds))


def gpu_memory(device) -> tuple[int, int] | None:
    """Bytes allocated and reserved by torch on ``device``; None when it is no CUDA device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


@ray.remote(max_restarts=-1, max_task_retries=0)
class EngineActor:
    def __init__(self, settings: EngineSettings, name: str = "engine"):
        from sam3_runtime.model import load_model
        from sam3_runtime.video.engine import StreamingEngine

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.name = name
        self.loaded = load_model(settings.checkpoint, device=settings.device, dtype=settings.dtype)
        self.compiled = None
        if settings.compile:
            from sam3_runtime.compile import compile_model

            self.compiled = compile_model(self.loaded.model, self.loaded.device)
        self.engine = StreamingEngine(self.loaded, settings.options, video=settings.video(self.loaded.config.video))
        self.max_batch = settings.max_batch
        self.max_wait_s = settings.max_wait_ms / 1000.0
        self._queue: deque = deque()  # (stream_id, frame, future), released in sequence order
        self._next_seq: dict[str, int] = {}  # per open session: the sequence number released next
        self._early: dict[str, dict[int, tuple]] = {}  # frames that arrived before their predecessors
        self._dropped_seen: dict[str, int] = {}  # per open session: its dropped-detection count already in stats_
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._sessions_lock = asyncio.Lock()  # a step and a session edit never overlap
        self._started = time.time()
        self.stats_ = EngineStats(started=self._started)

    async def ready(self) -> dict:
        import torch

        return {"name": self.name, "model": self.loaded.model_id, "device": str(self.loaded.device),
                "random_weights": self.loaded.random_weights, "started": self._started,
                "torch_threads": torch.get_num_threads(), "options": asdict(self.engine.options),
                "video": asdict(self.engine.video), "compiled": None if self.compiled is None else asdict(self.compiled)}

    async def open(self, stream_id: str, concepts: list[str], detection_threshold: float | None = None) -> None:
        async with self._sessions_lock:
            if stream_id in self.engine.stream_ids:
                self.engine.close_session(stream_id)  # a stream re-opening after its own restart
            self._forget(stream_id)
            self.engine.open_session(stream_id, concepts, detection_threshold=detection_threshold)
            self._next_seq[stream_id] = 0
            self._dropped_seen[stream_id] = 0  # a new session counts from zero; the stream's total goes on
            self.stats_.streams = len(self.engine.stream_ids)

    async def close(self, stream_id: str) -> None:
        async with self._sessions_lock:
            if stream_id in self.engine.stream_ids:
                self.engine.close_session(stream_id)
            self._forget(stream_id)
            self.stats_.streams = len(self.engine.stream_ids)

    async def add_concept(self, stream_id: str, concept: str) -> None:
        """Detect ``concept`` on the stream from its next step on; its other tracks keep their ids."""
        async with self._sessions_lock:  # never in the middle of a step
            self.engine.add_concept(stream_id, concept)

    async def remove_concept(self, stream_id: str, concept: str) -> None:
        """Stop detecting ``concept`` on the stream and drop its tracks."""
        async with self._sessions_lock:
            self.engine.remove_concept(stream_id, concept)

    async def concepts(self, stream_id: str) -> list[str]:
        """The concepts the stream's session detects now."""
        return sorted(self.engine.session(stream_id).concepts.values())

    def _forget(self, stream_id: str) -> None:
        """Drop a session's sequencing state; its frames not stepped yet fail (their caller is gone)."""
        self._next_seq.pop(stream_id, None)
        self._dropped_seen.pop(stream_id, None)
        waiting = [future for _, future in self._early.pop(stream_id, {}).values()]
        waiting += [future for sid, _, future in self._queue if sid == stream_id]
        self._queue = deque(req for req in self._queue if req[0] != stream_id)
        for future in waiting:
            if not future.done():
                future.set_exception(RuntimeError(f"session of stream {stream_id!r} was re-opened or closed"))
        if self._wakeup is not None:  # one session fewer may be all a waiting step was missing
            self._wakeup.set()

    async def stats(self) -> EngineStats:
        memory = gpu_memory(self.loaded.device)
        if memory is not None:
            self.stats_.gpu_memory_allocated_bytes, self.stats_.gpu_memory_reserved_bytes = memory
        return self.stats_

    async def process(self, stream_id: str, seq: int, frame: np.ndarray):
        """The engine's result (a ``FrameResult``) for frame number ``seq`` of the stream's session.

        ``seq`` counts 0, 1, 2, ... from the stream's latest ``open``; a frame is stepped only
        after every frame before it in the session.
        """
        if stream_id not in self._next_seq:
            raise RuntimeError(f"stream {stream_id!r} has no open session on engine {self.name!r}; call open() first")
        if seq < self._next_seq[stream_id] or seq in self._early.get(stream_id, {}):
            raise ValueError(f"stream {stream_id!r}: frame {seq} was already sent in this session")
        if self._loop_task is None:
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())
        future = asyncio.get_running_loop().create_future()
        early = self._early.setdefault(stream_id, {})
        early[seq] = (frame, future)
        while self._next_seq[stream_id] in early:
            frame_, future_ = early.pop(self._next_seq[stream_id])
            self._queue.append((stream_id, frame_, future_))
            self._next_seq[stream_id] += 1
        self._wakeup.set()
        return await future

    def _count_dropped(self, stream_ids: list[str]) -> None:
        """Add the detections each stepped session dropped at its object cap to the stream's total."""
        for sid in stream_ids:
            if sid not in self.engine.stream_ids:
                continue  # closed while its frame was being stepped
            total = self.engine.session(sid).dropped.total
            seen = self._dropped_seen.get(sid, 0)
            new = total - seen if total >= seen else total  # a count below the last one: the session was reset
            if new:
                self._dropped_seen[sid] = total
                self.stats_.dropped_detections[sid] = self.stats_.dropped_detections.get(sid, 0) + new

    def _batch_full(self) -> bool:
        """Whether waiting longer cannot make the next step bigger: every open session (``_next_seq``
        holds exactly those) has a frame released, or ``max_batch`` streams have."""
        waiting = len({r[0] for r in self._queue})
        return waiting >= min(self.max_batch, len(self._next_seq))

    async def _gather(self) -> None:
        """Wait until the batch is full or ``max_wait_s`` passed; every new frame, close and open wakes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while True:
            self._wakeup.clear()  # cleared before the check, so a frame released after it still wakes us
            remaining = deadline - loop.time()
            if not self._queue or self._batch_full() or remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[tuple]:
        """The oldest frame of each of up to ``max_batch`` streams, in queue order; the rest stay queued."""
        batch, rest, taken = [], deque(), set()
        for req in self._queue:
            if req[0] in taken or len(batch) >= self.max_batch:
                rest.append(req)  # a stream's next frame waits for the next step
            else:
                taken.add(req[0])
                batch.append(req)
        self._queue = rest
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            batch = self._take_batch()
            if not batch:  # the sessions of the queued frames were closed while we waited
                continue
            started = time.perf_counter()
            try:
                async with self._sessions_lock:
                    results = await loop.run_in_executor(None, self.engine.step, {sid: f for sid, f, _ in batch})
                    objects = sum(self.engine.session(s).num_objects for s in self.engine.stream_ids)
            except Exception as e:  # the whole step failed: every caller in it gets the error
                logger.exception("engine step failed")
                for _, _, fut in batch:
                    fut.set_exception(e)
                continue
            self.stats_.observe(len(batch), time.perf_counter() - started, objects)
            self._count_dropped([sid for sid, _, _ in batch])
            for sid, _, fut in batch:
                fut.set_result(results[sid])
