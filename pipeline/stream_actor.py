"""StreamActor: one per stream. Decodes, sends frames to its engine, publishes what comes back.

It owns everything about the stream that must survive an engine failure: the position in the
source, the durable track table (ids, histories and the last boxes it relinks by), and the
sinks. Its ``EngineLink`` carries the frames to the engine and back, and after an engine
failure re-opens the session and re-sends the frames in flight; the table then re-links the
tracks the fresh session re-acquires to their durable ids.

When the stream actor itself dies, its last ``ResumePoint`` (taken every
``sinks.parquet.flush_seconds`` right after a sink flush, and held by the driver) lets the
restarted actor carry on from there: ``run(resume=point)``.

A Parquet sink that cannot write (a full disk, a read-only or missing path) ends the stream at
once with one line naming the path: going on would only pile up rows in memory that cannot be
stored. Its last resume point was taken after the last successful flush, so ``--resume`` goes on
from there once the storage is back, and the files written after that point are taken back.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime

import ray

from operators.lifecycle import StreamTracks, saved_rules
from operators.redaction import redact_text, redact_url
from operators.resume_point import ResumePoint, StreamState
from operators.watchlist_changes import ControlCommand
from operators.watchlist_rules import WatchRule
from pipeline.engine_link import Collected, EngineLink
from pipeline.live_watchlist import LiveWatchlist, Rejection
from pipeline.stream_stats import ArrivalTimes, FrameLatency, StreamCounters, StreamStats

logger = logging.getLogger(__name__)


class StorageFailed(Exception):
    """The stream's Parquet sink cannot write; the message is the one line the stream fails with."""

RESUME_POINT_EVERY_S = 5.0  # between resume points (each flushes the sinks) when there is no Parquet flush cadence


@ray.remote(max_concurrency=4)
class StreamActor:
    def __init__(self, job, stream, engine_name: str, kafka_servers: str | None, run_id: str | None = None):
        # the engine comes by name: an actor handle argument would live in the object store, where
        # Ray cannot promise it survives until this actor's restart
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are per connection
        self.job = job
        self.stream = stream
        self.kafka_servers = kafka_servers
        self.run_id = run_id  # names this job run's Parquet files, so a resumed stream can take back its own
        engine = ray.get_actor(engine_name)
        self.rules = job.rules_for(stream)
        # no engine call here: a restarting actor refuses calls until __init__ returns, so it stays short
        self.tracks: StreamTracks | None = None  # built by run(), which asks the engine for its model id
        # detect down to the lowest threshold any rule publishes at; each rule filters its own concept
        self.link = EngineLink(engine, stream.id, [r.concept for r in self.rules], min(r.threshold for r in self.rules),
                               window=stream.max_in_flight, on_engine_restart=self._count_engine_restart)
        self.outputs = None  # StreamOutputs, opened by run(): a resumed run writes under its first run's id
        self.counters = StreamCounters()
        self.state = StreamState.STARTING
        self.error: str | None = None
        self.objects = 0  # on the latest processed frame
        self.arrivals = ArrivalTimes()  # when each frame was decoded, for its end-to-end latency
        self.latency = FrameLatency()
        self.position: tuple[int, float] = (0, 0.0)  # index and pts of the last frame handled
        self.resume_every_s = job.sinks.parquet.flush_seconds if job.sinks.parquet else RESUME_POINT_EVERY_S
        self._resume_due = 0.0  # time.monotonic() of the next resume point
        self._resume_point: ResumePoint | None = None
        self._stop = threading.Event()
        self._storage_error: str | None = None  # set when the Parquet sink failed: the stream ends
        self.live_watchlist = LiveWatchlist(stream.id)  # commands wait here for the next frame boundary

    def submit_command(self, command: ControlCommand | Rejection) -> None:
        """A live watchlist command (or one the driver rejected), applied before the stream's next frame."""
        self.live_watchlist.submit(command)

    def watch_rules(self) -> list[dict]:
        """The rules in force now, as ``WatchRule.to_dict()``."""
        rules = list(self.tracks.rules.values()) if self.tracks is not None else map(WatchRule.from_any, self.rules)
        return [rule.to_dict() for rule in rules]

    def resume_point(self) -> ResumePoint | None:
        """The latest resume point, or None before the first one."""
        return self._resume_point

    def stop(self) -> None:
        """Finish promptly: stop reading, drain the frames in flight, close tracks, flush sinks."""
        self._stop.set()

    def get_stats(self) -> StreamStats:
        locations = dict(self.outputs.locations) if self.outputs is not None else {}
        sinks = self.outputs.counts() if self.outputs is not None else {}
        return StreamStats(self.stream.id, self.state, replace(self.counters), self.objects, self.error, locations,
                           time.time(), target_fps=self.stream.fps, latency=self.latency, sinks=sinks)

    def run(self, resume: ResumePoint | None = None, restart: int = 0) -> StreamStats:
        """Process the stream to its end; returns its final stats. After the actor died, ``restart``
        counts the restarts and ``resume`` (None when it died before its first one) is where it left off."""
        from operators.video_source import VideoSourceError
        from pipeline.outputs import StreamOutputs

        model_id = ray.get(self.link.engine.ready.remote())["model"]
        if resume is not None:
            self._take_saved_rules(resume, restart)
        # records and events carry the source as shown: a camera URL's password never reaches a sink
        self.tracks = StreamTracks(self.job.name, self.stream.id, redact_url(self.stream.source), model_id,
                                   self.rules)
        if resume is not None and resume.run_id:
            self.run_id = resume.run_id  # go on numbering (and taking back) that run's Parquet files
        try:
            self.outputs = StreamOutputs(self.job, self.stream.id, self.kafka_servers, run=self.run_id)
        except Exception as e:  # e.g. a Parquet path that cannot be created: this stream fails, in one line
            self.state, self.error = StreamState.FAILED, self._storage_message(e)
            logger.error("stream %s: %s", self.stream.id, self.error)
            self.link.close()
            return self.get_stats()
        if resume is not None or restart:
            # what was written after the resume point (or, without one, in this run) is written again
            self.outputs.rollback(resume.sink_sequence if resume is not None else {})
        if resume is not None:
            self.tracks.load_state_dict(resume.tracks)  # the new session's first result re-links them
            self.position = (resume.frame_index, resume.pts_s)
            self.counters = StreamCounters.from_saved(resume.counters)
        self.counters.restarts = restart
        self._publish_start(resume, restart)
        self.link.open()
        self.state = StreamState.RUNNING
        self._resume_due = time.monotonic() + self.resume_every_s
        failure: str | None = None
        try:
            for frame in self._frames(resume):
                if self.live_watchlist.pending:
                    self._apply_watchlist_changes(frame)
                self.link.send(frame)
                if self.link.full:
                    self._handle(self.link.collect())
                    self._maybe_take_resume_point()
                self._check_storage()
            while self.link.in_flight:
                self._handle(self.link.collect())
                self._check_storage()
        except StorageFailed as e:
            failure = str(e)
            self.link.discard()  # their outputs could not be stored either: --resume decodes them again
        except VideoSourceError as e:
            failure = redact_text(str(e), self.stream.source)  # FFmpeg's messages quote the URL
        except Exception as e:  # anything else ends this stream only, with a stream_error
            logger.error("stream %s failed: %s", self.stream.id, redact_text(traceback.format_exc(), self.stream.source))
            failure = redact_text(f"{type(e).__name__}: {e}", self.stream.source)
        finally:
            if failure is not None:
                self._drain()
            self._finish(failure)
        return self.get_stats()

    def _frames(self, resume: ResumePoint | None):
        from operators.sources import stream_frames
        from pipeline.decoding import decode_ahead, frames_after

        stream = self.stream
        source = stream_frames(stream.source, stream.fps, loop=stream.loop, on_reconnect=self._on_reconnect,
                               should_stop=self._stop.is_set)
        if resume is not None:
            source = frames_after(source, resume, stream.live)
        source = self.arrivals.stamp(source)  # on the decode thread, as each frame is decoded
        return decode_ahead(source, self.link.window, stream.live, self.counters, self._stop)

    def _handle(self, collected: Collected) -> None:
        frame, result = collected.frame, collected.result
        if collected.new_session:  # its engine ids are new: hand them the durable ids they continue
            self.tracks.relink_by_boxes(result.objects)
        observations, events = self.tracks.update(result, frame.pts_s, _now(), frame_index=frame.index)
        self._publish(observations, events)
        if (seconds := self.arrivals.latency(frame.index)) is not None:
            self.latency = self.latency.observe(seconds)
        self.counters.frames_processed += 1
        self.objects = len(result.objects)
        self.position = (frame.index, frame.pts_s)

    def _apply_watchlist_changes(self, frame) -> None:
        """At a frame boundary: the frames in flight are decided by the old rules, ``frame`` on by the new."""
        while self.link.in_flight:
            self._handle(self.link.collect())
        self.live_watchlist.apply(self.tracks, self.link, frame.index, frame.pts_s, lambda e: self._publish([], e))

    def _take_saved_rules(self, resume: ResumePoint, restart: int) -> None:
        """Within one job run a resumed stream keeps the rules it had changed to live; ``--resume`` (a new
        run, ``restart`` 0) starts from the job file's."""
        saved = saved_rules(resume.tracks)
        if saved is None or saved == [WatchRule.from_any(r) for r in self.rules]:
            return
        if not restart:
            logger.info("stream %s: resumes with the job file's watchlist; the live changes of the earlier run "
                        "are not carried over", self.stream.id)
            return
        self.rules = saved
        self.link.concepts = [r.concept for r in saved]
        self.link.detection_threshold = min(r.threshold for r in saved)

    def _drain(self) -> None:
        """Frames decoded before a failure still count, as far as the engine still answers."""
        while self.link.in_flight:
            try:
                self._handle(self.link.collect())
            except Exception:
                self.link.discard()

    def _finish(self, failure: str | None) -> None:
        index, pts = self.position
        self._publish([], self.tracks.close(index, pts))
        if failure is not None:
            logger.error("stream %s: %s", self.stream.id, failure)
            self._publish([], [self.tracks.stream_error(index, _now(), failure, pts_s=pts)])
            self.state, self.error = StreamState.FAILED, failure
        else:
            self._publish([], [self.tracks.stream_end(index, _now(), pts_s=pts)])
            self.state = StreamState.STOPPED if self._stop.is_set() else StreamState.FINISHED
        try:
            self.outputs.close()
            self._take_resume_point()
        except Exception as e:  # the resume point stays the last one taken after a successful flush
            self.counters.sink_errors += 1
            if failure is None:
                self.state, self.error = StreamState.FAILED, self._storage_message(e)
        self.link.close()

    def _publish(self, observations, events) -> None:
        try:
            for change in self.outputs.write(observations, events) or ():  # a sink turned degraded or recovered
                self._publish([], [change.event(self.tracks, *self.position, _now())])
        except Exception as e:  # a sink failure is counted and reported, never silently ignored
            self.counters.sink_errors += 1
            logger.error("stream %s: sink error: %s", self.stream.id, e)
            self._note_storage_failure(e)
        self.counters.records += len(observations)
        self.counters.events += len(events)
        self.counters.tracks += sum(e.type == "track_start" for e in events)

    def _publish_start(self, resume: ResumePoint | None, restart: int) -> None:
        if resume is None:
            self._publish([], [self.tracks.stream_start(0, _now())])
            return
        logger.warning("stream %s: resumed at frame %d (restart %d)", self.stream.id, resume.frame_index, restart)
        self._publish([], [self.tracks.stream_resume(resume.frame_index, _now(), pts_s=resume.pts_s,
                                                     restarts=restart)])

    def _on_reconnect(self, attempt, error, downtime_s) -> None:
        # called on the decode thread, between two frames of the source
        self.counters.reconnects += 1
        index, pts = self.position
        self._publish([], [self.tracks.stream_reconnect(index, _now(), attempt=attempt,
                                                        error=redact_text(str(error), self.stream.source),
                                                        downtime_s=downtime_s, pts_s=pts)])

    def _count_engine_restart(self) -> None:
        self.counters.engine_restarts += 1

    def _maybe_take_resume_point(self) -> None:
        if time.monotonic() < self._resume_due:
            return
        self._resume_due = time.monotonic() + self.resume_every_s
        try:
            self.outputs.flush()  # a resume point never runs ahead of what the sinks hold
        except Exception as e:
            self.counters.sink_errors += 1
            logger.error("stream %s: sink flush failed, resume point skipped: %s", self.stream.id, e)
            self._note_storage_failure(e)
            return
        self._take_resume_point()

    def _note_storage_failure(self, error: Exception) -> None:
        """Remember the first Parquet failure; Kafka's own failures are counted and retried, not fatal."""
        counts = self.outputs.counts().get("parquet")
        if self._storage_error is None and counts is not None and counts.errors:
            self._storage_error = self._storage_message(error)

    def _check_storage(self) -> None:
        if self._storage_error is not None:
            raise StorageFailed(self._storage_error)

    def _storage_message(self, error: Exception) -> str:
        """One line naming where the stream could not write, and what to do."""
        text = " ".join(redact_text(str(error), self.stream.source).split())  # one line, whatever the cause said
        parquet = self.job.sinks.parquet
        if parquet is None or "Parquet" not in text:
            return f"sink: {text}"
        return (f"cannot write to sinks.parquet.path {parquet.path} ({text}); free space or fix its permissions, "
                "then run the job again with --resume")

    def _take_resume_point(self) -> None:
        index, pts = self.position
        self._resume_point = ResumePoint(
            stream_id=self.stream.id, frame_index=index if self.counters.frames_processed else -1,  # -1: no frame yet
            pts_s=float(pts), tracks=self.tracks.state_dict(), counters=self.counters.saved(),
            sink_sequence=self.outputs.sequence(), run_id=self.run_id, state=self.state,
        )


def _now() -> datetime:
    return datetime.now(UTC)
