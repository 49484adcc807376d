"""The job driver: places engines and streams on Ray, watches them, shuts down cleanly.

``run_job`` is what ``sam3-stream run JOB.yaml`` calls. It starts (or joins) Ray, the
embedded Kafka-compatible broker when the job asks for it, one ``EngineActor`` per replica
and one ``StreamActor`` per stream (each stream on the least-loaded engine), then polls their
counters for the progress display and the Prometheus endpoint until every stream has ended,
``--max-seconds`` passes, or SIGINT/SIGTERM asks for a graceful stop.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import ray

from operators.redaction import redact_text
from operators.resume_point import StreamState
from pipeline.exit_codes import ExitCode
from pipeline.metrics import JobMetrics, serve_job_metrics
from pipeline.progress import JobProgress, summary_table
from pipeline.stream_stats import StreamCounters, StreamStats
from pipeline.supervisor import install_stop_handlers

logger = logging.getLogger(__name__)

POLL_S = 1.0
REFUSED_RETRY_S = 0.25  # before asking a restarting stream actor again to run
STREAM_RESTARTS = 3  # a stream actor that dies is resumed from its latest resume point this many times


@dataclass
class JobResult:
    exit_code: int
    streams: dict[str, StreamStats]  # per stream: its final counters, state, error and outputs


@dataclass
class JobActors:
    """The running job's actors by name (engine-0, ...) and by stream id, for tools and tests."""

    engines: dict
    streams: dict


def run_job(job_path: str, max_seconds: float | None = None, show_progress: bool = True,
            on_started: Callable[[JobActors], None] | None = None, resume: bool = False) -> JobResult:
    """Run a job file to its end. ``on_started`` gets the actors once streams run (tests, tools).

    ``resume`` carries each stream on from the resume point a previous run of the job left beside
    its Parquet dataset; streams that had finished are not run again.
    """
    from operators.broker import resolve_bootstrap
    from pipeline.engines import start_engines
    from pipeline.jobspec import load_job
    from pipeline.outputs import check_parquet_path
    from pipeline.placement import warn_if_outputs_scatter
    from pipeline.resume_store import ResumeStore, resume_dir
    from pipeline.stream_actor import StreamActor

    job = load_job(job_path)  # JobSpecError (exit 2) before anything starts
    if resume and job.sinks.parquet is None:
        raise ValueError(f"{job_path}: --resume needs sinks.parquet: the streams' resume points are kept beside "
                         "the Parquet dataset they count")
    check_parquet_path(job, job_path)  # a path no stream could write to: one line, exit 2, nothing started
    store = ResumeStore(resume_dir(job))
    saved = {spec.id: store.load(spec.id) for spec in job.streams} if resume else {}
    stop = threading.Event()
    with ExitStack() as cleanup:
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True)
            cleanup.callback(ray.shutdown)
        kafka_servers = None
        if job.sinks.kafka is not None:
            kafka_servers, broker = resolve_bootstrap(job.sinks.kafka.bootstrap_servers)
            if broker is not None:
                cleanup.callback(broker.close)
                logger.info("embedded Kafka-compatible broker on %s", kafka_servers)
        reload = threading.Event()  # SIGHUP: read the job file again and apply its watchlist changes
        install_stop_handlers(stop, cleanup, stopping="finishing gracefully", reload=reload)
        metrics = JobMetrics(job.name)
        serve_job_metrics(metrics, job, job_path, cleanup)

        run_id = uuid.uuid4().hex[:6]  # actor names stay unique when a job runs again in the same cluster
        warn_if_outputs_scatter(job)  # a local Parquet path on several nodes: one warning
        started_engines = start_engines(job, job_path, run_id, cleanup)
        engines, engine_names = started_engines.handles, started_engines.names

        load = dict.fromkeys(engines, 0)
        streams: dict = {}
        runs: dict = {}
        finals: dict[str, StreamStats] = {}
        for spec in job.streams:
            point = saved.get(spec.id)
            if point is not None and point.state is StreamState.FINISHED:
                logger.info("stream %s finished in an earlier run; not run again", spec.id)
                finals[spec.id] = StreamStats(spec.id, StreamState.FINISHED, StreamCounters.from_saved(point.counters))
                continue
            name = min(load, key=load.get)  # least-loaded engine
            load[name] += 1
            options = dict(name=f"{job.name}-{run_id}-stream-{spec.id}", max_restarts=STREAM_RESTARTS,
                           max_task_retries=0, enable_task_events=False)
            actor = StreamActor.options(**options).remote(job, spec, engine_names[name], kafka_servers, run_id)
            streams[spec.id] = actor
            cleanup.callback(ray.kill, actor)
            runs[spec.id] = actor.run.remote(resume=saved.get(spec.id))

        live = _LiveChanges(job_path, job, kafka_servers, run_id, streams, cleanup)
        if on_started is not None:
            on_started(JobActors(engines, streams))
        progress = JobProgress(job.name, enabled=show_progress)
        restarts = dict.fromkeys(streams, 0)
        sources = {spec.id: spec.source for spec in job.streams}  # to mask their secrets in the errors shown
        restarting: set[str] = set()  # resumed after a death, its actor not back yet
        started = time.time()
        with progress:
            pending = dict(runs)
            stopping = False
            while pending:
                ready, _ = ray.wait(list(pending.values()), timeout=POLL_S, num_returns=len(pending))
                for ref in ready:
                    sid = next(k for k, v in pending.items() if v == ref)
                    outcome, ending = _ended(ref, sid, sources[sid])
                    if sid in restarting and ending is _Ending.REFUSED and not stopping:
                        # a restarting actor refuses calls until its __init__ returned: ask again, it is no new death
                        time.sleep(REFUSED_RETRY_S)
                        pending[sid] = streams[sid].run.remote(resume=store.get(sid), restart=restarts[sid])
                        continue
                    restarting.discard(sid)
                    if ending is not _Ending.RETURNED and restarts[sid] < STREAM_RESTARTS and not stopping:
                        restarts[sid] += 1
                        logger.warning("stream %s: its actor died (%s); resuming it from %s (restart %d of %d)", sid,
                                       outcome.error, _describe(store.get(sid)), restarts[sid], STREAM_RESTARTS)
                        pending[sid] = streams[sid].run.remote(resume=store.get(sid), restart=restarts[sid])
                        restarting.add(sid)
                        continue
                    finals[sid] = outcome
                    del pending[sid]
                    _poll_resume_points(streams, [sid], store)  # its final one: where a --resume would go on
                _poll_resume_points(streams, pending, store)
                live.poll(set(pending) if not stopping else set(), reload)
                snapshot = _poll(streams, finals)
                engine_stats = _poll_engines(engines)
                metrics.update(snapshot, engine_stats)
                progress.update(snapshot)
                timed_out = max_seconds is not None and time.time() - started > max_seconds
                if (stop.is_set() or timed_out) and not stopping:
                    stopping = True
                    logger.info("stopping: draining in-flight frames, closing tracks, flushing sinks")
                    for sid in pending:
                        streams[sid].stop.remote()
        summary_table(job, finals)
        failed = [sid for sid, s in finals.items() if s.state is StreamState.FAILED]
        for sid in failed:
            logger.error("stream %s failed: %s", sid, finals[sid].error)
        return JobResult(ExitCode.PARTIAL if failed else ExitCode.OK, finals)


class _Ending(enum.Enum):
    RETURNED = enum.auto()  # run() returned or raised: the stream ended
    DIED = enum.auto()  # the stream actor died during the call (it may be resumed)
    REFUSED = enum.auto()  # the actor was dead or restarting when the call came


def _ended(ref, sid: str, source: str) -> tuple[StreamStats, _Ending]:
    """A finished ``run`` call's final stats, and how the call ended. Ray's error text holds the actor's
    traceback, which may quote the source URL: its secrets are masked."""
    try:
        return ray.get(ref), _Ending.RETURNED
    except ray.exceptions.ActorUnavailableError as e:
        error, ending = f"stream actor died: {e}", _Ending.REFUSED
    except ray.exceptions.RayActorError as e:
        error, ending = f"stream actor died: {e}", _Ending.DIED
    except Exception as e:
        error, ending = f"stream actor failed: {e}", _Ending.RETURNED
    return StreamStats(sid, StreamState.FAILED, error=redact_text(error, source)), ending


def _describe(point) -> str:
    return "the stream's start" if point is None else f"its resume point at frame {point.frame_index}"


def _gather(refs: dict) -> dict:
    """The answers of those calls that came back within ``POLL_S``; a busy or restarting actor is skipped."""
    out = {}
    for key, ref in refs.items():
        try:
            out[key] = ray.get(ref, timeout=POLL_S)
        except Exception:
            continue
    return out


def _poll_resume_points(streams: dict, stream_ids, store) -> None:
    """Keep the streams' latest resume points in the driver, where they outlive the stream actors."""
    for point in _gather({sid: streams[sid].resume_point.remote() for sid in stream_ids}).values():
        if point is not None:
            store.put(point)


def _poll(streams: dict, finals: dict[str, StreamStats]) -> dict[str, StreamStats]:
    live = _gather({sid: a.get_stats.remote() for sid, a in streams.items() if sid not in finals})
    return {**finals, **live}


def _poll_engines(engines: dict) -> dict:
    return _gather({name: actor.stats.remote() for name, actor in engines.items()})


class _LiveChanges:
    """The job's live watchlist changes: its control topic (when set) and job file reloads."""

    def __init__(self, job_path: str, job, kafka_servers: str | None, run_id: str, streams: dict, cleanup: ExitStack):
        from pipeline.control import ControlConsumer, JobEvents, stream_rules

        self.job_path, self.job, self.streams = job_path, job, streams
        self.file_rules = stream_rules(job)  # per stream, the job file's rules last applied
        self.events = JobEvents(job, kafka_servers, run_id)
        cleanup.callback(self.events.close)
        self.control = None
        kafka = job.sinks.kafka
        if kafka is not None and kafka.control_topic and kafka_servers:
            self.control = ControlConsumer(kafka_servers, kafka.control_topic, kafka.client)
            cleanup.callback(self.control.close)
            logger.info("live watchlist commands are read from Kafka topic %s", kafka.control_topic)

    def poll(self, running: set[str], reload: threading.Event) -> None:
        from pipeline.control import dispatch, reload_job

        if self.control is not None:
            dispatch(self.control.poll(), self.streams, running, self.events)
        if reload.is_set():
            reload.clear()
            logger.info("received SIGHUP: reading %s again", self.job_path)
            reload_job(self.job_path, self.job, self.file_rules, self.streams, running, self.events)
