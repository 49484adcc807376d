"""StreamActor: one per stream. Decodes, sends frames to its engine, publishes what comes back.

It owns everything about the stream that must survive an engine failure: the position in the
source, the durable track table and its id counter, and the sinks. When its engine dies, Ray
restarts the engine; the stream re-opens its session there, re-sends the frames that were in
flight (so no frame after the restart is lost) and re-links the tracks the fresh session
re-acquires to their durable ids.

When the stream actor itself dies, its last ``StreamCheckpoint`` (taken every
``sinks.parquet.flush_seconds`` right after a sink flush, and held by the driver) lets the restarted
actor carry on from there: ``run(resume=checkpoint)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import ray
from ray.exceptions import RayActorError

logger = logging.getLogger(__name__)

ENGINE_WAIT_S = 120.0  # how long a stream waits for a restarted engine before it fails
CHECKPOINT_EVERY_S = 5.0  # between checkpoints (each flushes the sinks) when there is no Parquet flush cadence


@dataclass
class StreamStats:
    stream_id: str
    state: str = "starting"  # starting | running | reconnecting | finished | failed | stopped
    frames_decoded: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    objects: int = 0
    tracks: int = 0
    records: int = 0
    events: int = 0
    sink_errors: int = 0
    engine_restarts: int = 0
    reconnects: int = 0
    restarts: int = 0  # times this stream was restored from its checkpoint
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    updated: float = 0.0


@ray.remote(max_concurrency=4)
class StreamActor:
    def __init__(self, job, stream, engine_name: str, kafka_servers: str | None, run_id: str | None = None):
        # the engine comes by name: an actor handle argument would live in the object store, where
        # Ray cannot promise it survives until this actor's restart
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are per connection
        self.job = job
        self.stream = stream
        self.engine = ray.get_actor(engine_name)
        self.kafka_servers = kafka_servers
        self.run_id = run_id  # names this job run's Parquet files, so a restored stream can take back its own
        self.stats = StreamStats(stream.id)
        self._stop = threading.Event()
        self._checkpoint = None  # the latest StreamCheckpoint

    def checkpoint(self):
        """The latest checkpoint (a ``StreamCheckpoint``), or None before the first one."""
        return self._checkpoint

    def stop(self) -> None:
        """Finish promptly: stop reading, drain the frames in flight, close tracks, flush sinks."""
        self._stop.set()

    def get_stats(self) -> dict:
        self.stats.updated = time.time()
        return asdict(self.stats)

    def run(self, resume=None, restart: int = 0) -> dict:
        """Process the stream to its end. After the actor died, ``restart`` counts the restarts and
        ``resume`` (a ``StreamCheckpoint``, None when it died before its first one) is where it left off."""
        from operators.lifecycle import StreamTracks
        from operators.sources import stream_frames
        from operators.video_source import VideoSourceError
        from pipeline.outputs import StreamOutputs

        job, stream = self.job, self.stream
        rules = job.rules_for(stream)
        self._concepts = [r.concept for r in rules]
        # detect down to the lowest threshold any rule publishes at; each rule filters its own concept
        self._detection_threshold = min(r.threshold for r in rules)
        model_id = ray.get(self.engine.ready.remote())["model"]
        tracks = StreamTracks(job.name, stream.id, stream.source, model_id, rules)
        self._last_boxes: dict[int, tuple[str, tuple]] = {}  # durable id -> (concept, last box)
        self._relink_pending = False
        if resume is not None and resume.run_id:
            self.run_id = resume.run_id  # go on numbering (and taking back) that run's Parquet files
        outputs = StreamOutputs(job, stream.id, self.kafka_servers, run=self.run_id)
        self.stats.outputs = outputs.locations
        window = max(1, stream.max_in_flight)
        position = [0, 0.0]  # index and pts of the last frame handled
        if resume is not None or restart:
            # what was written after the checkpoint (or, without one, in this run) is written again
            outputs.rollback(resume.sink_sequence if resume is not None else {})
        if resume is not None:
            tracks.load_state_dict(resume.tracks)
            self._last_boxes = dict(resume.last_boxes)
            self._relink_pending = True  # the fresh session's first frame re-links the live tracks
            position = [resume.frame_index, resume.pts_s]
            for name, value in resume.counters.items():
                setattr(self.stats, name, value)
        self.stats.restarts = restart
        self._checkpoint_every = job.sinks.parquet.flush_seconds if job.sinks.parquet else CHECKPOINT_EVERY_S
        self._checkpoint_due = time.monotonic() + self._checkpoint_every

        def now():
            return datetime.now(UTC)

        def publish(observations, events) -> None:
            try:
                outputs.write(observations, events)
            except Exception as e:  # a sink failure is counted and reported, never silently ignored
                self.stats.sink_errors += 1
                logger.error("stream %s: sink error: %s", stream.id, e)
            self.stats.records += len(observations)
            self.stats.events += len(events)
            self.stats.tracks += sum(e.type == "track_start" for e in events)

        def on_reconnect(attempt, error, downtime_s):
            self.stats.reconnects += 1
            publish([], [tracks.stream_reconnect(position[0], now(), attempt=attempt, error=str(error),
                                                 downtime_s=downtime_s, pts_s=position[1])])

        if resume is None:
            publish([], [tracks.stream_start(0, now())])
        else:
            logger.warning("stream %s: restored from its checkpoint at frame %d (restart %d)", stream.id,
                           resume.frame_index, restart)
            publish([], [tracks.stream_resume(resume.frame_index, now(), pts_s=resume.pts_s, restarts=restart)])
        ray.get(self.engine.open.remote(stream.id, self._concepts, self._detection_threshold))
        self._sent = 0  # frames sent to the current engine session (its sequence numbers)
        self.stats.state = "running"
        in_flight: deque = deque()
        failure: str | None = None
        try:
            source = stream_frames(stream.source, stream.fps, loop=stream.loop, on_reconnect=on_reconnect,
                                   should_stop=self._stop.is_set)
            if resume is not None:
                source = _after(source, resume, stream.live)
            frames = _decoded(source, window, stream.live, self.stats, self._stop)
            for frame in frames:
                in_flight.append((frame, self._send(frame)))
                if len(in_flight) >= window:
                    position[:] = self._collect(in_flight, tracks, publish)
                    self._maybe_checkpoint(tracks, outputs, position)
            while in_flight:
                position[:] = self._collect(in_flight, tracks, publish)
        except VideoSourceError as e:
            failure = str(e)
        except Exception as e:  # anything else ends this stream only, with a stream_error
            logger.exception("stream %s failed", stream.id)
            failure = f"{type(e).__name__}: {e}"
        finally:
            while in_flight and failure is not None:  # frames decoded before the failure still count
                try:
                    position[:] = self._collect(in_flight, tracks, publish)
                except Exception:
                    in_flight.clear()
            index, pts = position
            publish([], tracks.close(index, pts))
            if failure is not None:
                logger.error("stream %s: %s", stream.id, failure)
                publish([], [tracks.stream_error(index, now(), failure, pts_s=pts)])
                self.stats.state, self.stats.error = "failed", failure
            else:
                publish([], [tracks.stream_end(index, now(), pts_s=pts)])
                self.stats.state = "stopped" if self._stop.is_set() else "finished"
            try:
                outputs.close()
                self._take_checkpoint(tracks, outputs, position, state=self.stats.state)
            except Exception as e:
                self.stats.sink_errors += 1
                self.stats.state, self.stats.error = "failed", f"sink: {e}"
            with contextlib.suppress(RayActorError):
                ray.get(self.engine.close.remote(stream.id))
        return self.get_stats()

    def _maybe_checkpoint(self, tracks, outputs, position) -> None:
        if time.monotonic() < self._checkpoint_due:
            return
        self._checkpoint_due = time.monotonic() + self._checkpoint_every
        try:
            outputs.flush()  # a checkpoint never runs ahead of what the sinks hold
        except Exception as e:
            self.stats.sink_errors += 1
            logger.error("stream %s: sink flush failed, checkpoint skipped: %s", self.stream.id, e)
            return
        self._take_checkpoint(tracks, outputs, position)

    def _take_checkpoint(self, tracks, outputs, position, state: str = "running") -> None:
        from operators.stream_checkpoint import COUNTERS, StreamCheckpoint

        handled = int(position[0]) if self.stats.frames_processed else -1  # -1: not even frame 0 yet
        self._checkpoint = StreamCheckpoint(
            stream_id=self.stream.id, frame_index=handled, pts_s=float(position[1]),
            tracks=tracks.state_dict(), last_boxes=dict(self._last_boxes),
            counters={name: getattr(self.stats, name) for name in COUNTERS}, sink_sequence=outputs.sequence(),
            run_id=self.run_id, state=state,
        )

    def _collect(self, in_flight: deque, tracks, publish) -> list:
        """Wait for the oldest frame in flight; on an engine failure, re-open and re-send."""
        from operators.relink import match_tracks

        frame, ref = in_flight[0]
        try:
            result = ray.get(ref)
        except RayActorError as e:
            self._recover_engine(in_flight, e)
            return self._collect(in_flight, tracks, publish)
        in_flight.popleft()
        if result.error:
            raise ValueError(result.error)
        if self._relink_pending:
            # the fresh session's first frame: hand its tracks the durable ids they had before
            new = [(o.track_id, o.concept, o.box_xyxy) for o in result.objects]
            live = set(tracks.live_ids(published_only=False))
            tracks.relink(match_tracks({k: v for k, v in self._last_boxes.items() if k in live}, new))
            self._relink_pending = False
        observations, events = tracks.update(result, frame.pts_s, datetime.now(UTC), frame_index=frame.index)
        for o in result.objects:
            durable = tracks.durable_id(o.track_id)
            if durable is not None:
                self._last_boxes[durable] = (o.concept, o.box_xyxy)
        live = set(tracks.live_ids(published_only=False))
        self._last_boxes = {k: v for k, v in self._last_boxes.items() if k in live}
        publish(observations, events)
        self.stats.frames_processed += 1
        self.stats.objects = len(result.objects)
        return [frame.index, frame.pts_s]

    def _recover_engine(self, in_flight: deque, error: Exception) -> None:
        logger.warning("stream %s: engine failed (%s); waiting for its restart", self.stream.id, error)
        self.stats.engine_restarts += 1
        deadline = time.time() + ENGINE_WAIT_S
        while True:
            try:
                ray.get(self.engine.open.remote(self.stream.id, self._concepts, self._detection_threshold), timeout=10)
                break
            except (RayActorError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise RuntimeError(f"engine did not come back within {ENGINE_WAIT_S:.0f} s") from error
                time.sleep(0.5)
        self._relink_pending = True
        self._sent = 0
        frames = [f for f, _ in in_flight]
        in_flight.clear()
        for f in frames:  # nothing decoded is lost: the frames in flight go to the new session
            in_flight.append((f, self._send(f)))

    def _send(self, frame):
        ref = self.engine.process.remote(self.stream.id, self._sent, frame.image)
        self._sent += 1
        return ref


def _after(frames, checkpoint, live: bool):
    """The frames a restored stream still has to handle. A file source is decoded again from its
    start and skips what the checkpoint covers; a live source goes on from now, numbered on."""
    if live:
        offset, pts = checkpoint.frame_index + 1, checkpoint.pts_s
        for frame in frames:
            yield replace(frame, index=frame.index + offset, pts_s=frame.pts_s + pts)
        return
    for frame in frames:
        if frame.index > checkpoint.frame_index:
            yield frame


def _decoded(frames, window: int, live: bool, stats: StreamStats, stop: threading.Event):
    """Decode on a background thread into a bounded buffer: live sources drop the oldest frame
    when the engine falls behind (counted); files block the decoder instead (never drop)."""
    from operators.live_source import FrameWindow

    buffer = FrameWindow(window * 2, drop_oldest=live)
    errors: list[BaseException] = []

    def decode() -> None:
        try:
            for frame in frames:
                stats.frames_decoded += 1
                if not buffer.put(frame) or stop.is_set():
                    break
        except BaseException as e:
            errors.append(e)
        finally:
            buffer.close()

    threading.Thread(target=decode, name="decode", daemon=True).start()
    while True:
        item = buffer.get()
        stats.frames_dropped = buffer.dropped
        if item is None:
            break
        yield item
    if errors:
        raise errors[0]
