"""StreamActor: one per stream. Decodes, sends frames to its engine, publishes what comes back.

It owns everything about the stream that must survive an engine failure: the position in the
source, the durable track table and its id counter, and the sinks. When its engine dies, Ray
restarts the engine; the stream re-opens its session there, re-sends the frames that were in
flight (so no frame after the restart is lost) and re-links the tracks the fresh session
re-acquires to their durable ids.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import ray
from ray.exceptions import RayActorError

logger = logging.getLogger(__name__)

ENGINE_WAIT_S = 120.0  # how long a stream waits for a restarted engine before it fails


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
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    updated: float = 0.0


@ray.remote(max_concurrency=4)
class StreamActor:
    def __init__(self, job, stream, engine, kafka_servers: str | None):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are per connection
        self.job = job
        self.stream = stream
        self.engine = engine
        self.kafka_servers = kafka_servers
        self.stats = StreamStats(stream.id)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish promptly: stop reading, drain the frames in flight, close tracks, flush sinks."""
        self._stop.set()

    def get_stats(self) -> dict:
        self.stats.updated = time.time()
        return asdict(self.stats)

    def run(self) -> dict:
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
        outputs = StreamOutputs(job, stream.id, self.kafka_servers)
        self.stats.outputs = outputs.locations
        window = max(1, stream.max_in_flight)
        position = [0, 0.0]  # index and pts of the last frame handled

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

        publish([], [tracks.stream_start(0, now())])
        ray.get(self.engine.open.remote(stream.id, self._concepts, self._detection_threshold))
        self._sent = 0  # frames sent to the current engine session (its sequence numbers)
        self.stats.state = "running"
        in_flight: deque = deque()
        failure: str | None = None
        try:
            frames = _decoded(stream_frames(stream.source, stream.fps, loop=stream.loop, on_reconnect=on_reconnect,
                                            should_stop=self._stop.is_set), window, stream.live, self.stats, self._stop)
            for frame in frames:
                in_flight.append((frame, self._send(frame)))
                if len(in_flight) >= window:
                    position[:] = self._collect(in_flight, tracks, publish)
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
            except Exception as e:
                self.stats.sink_errors += 1
                self.stats.state, self.stats.error = "failed", f"sink: {e}"
            with contextlib.suppress(RayActorError):
                ray.get(self.engine.close.remote(stream.id))
        return self.get_stats()

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
