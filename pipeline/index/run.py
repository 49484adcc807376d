"""Index a video archive: plan from the catalog, hand files out over every engine, record each result.

``run_index`` is what ``sam3-stream index`` and ``sam3-stream run`` (on a job with an ``index:``
section) call. It lists the sources, reads the dataset's catalog and plans the work
(``pipeline.index.catalog.plan_work``: only new, changed, retried or concept-extended files) before
anything starts, so a run with nothing to do ends in seconds. Then it starts the engines and one
:class:`~pipeline.index.worker.IndexWorker` per engine, and keeps every worker holding
``files_in_flight`` files, handing the next file to whichever worker finished one: a long file never
holds back the rest. Completed files' catalog rows are appended every few seconds and at the end.

A worker that dies (its node lost, say) gives its files back to the queue; a file whose worker
died ``MAX_ATTEMPTS`` times is recorded as failed. Every engine is pinged; one that has not answered
for ``ENGINE_DOWN_S`` (its node lost and no room for it elsewhere) is taken as lost: its worker is
restarted, so the files it held go back to the queue for the live engines, and it takes no new
files until its engine answers again. Should no engine answer for ``ENGINE_WAIT_S``, the run stops
(exit code 3) and the files left stay for the next run. SIGINT/SIGTERM or ``max_seconds`` stop
handing out files and abandon the passes in flight (they wrote nothing; the same command later
does them). Exit code 0 when every file is done, 3 when some failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import ray

from operators.index_tables import DONE
from operators.storage import resolve
from pipeline.engine_link import ENGINE_WAIT_S
from pipeline.exit_codes import ExitCode
from pipeline.index.catalog import Catalog, catalog_row, plan_work
from pipeline.index.inputs import list_archive
from pipeline.index.metrics import IndexMetrics, IndexSnapshot
from pipeline.index.progress import IndexProgress
from pipeline.metrics import serve_job_metrics
from pipeline.placement import warn_if_outputs_scatter
from pipeline.supervisor import install_stop_handlers

logger = logging.getLogger(__name__)

POLL_S = 0.5
CATALOG_FLUSH_S = 5.0  # completed files' rows wait at most this long before they are appended
MAX_ATTEMPTS = 3  # a file whose worker died this many times while on it is recorded as failed
REFUSED_RETRY_S = 0.25
# An engine restarting on a live node answers again well within this (its passes then carry on
# where they were, see EngineLink); one silent for longer has no node to restart on.
ENGINE_DOWN_S = 30.0
PING_S = 1.0


@dataclass
class IndexResult:
    exit_code: int
    done: int = 0
    failed: int = 0
    up_to_date: int = 0
    failed_before: int = 0  # failed in an earlier run and not retried
    frames: int = 0
    stopped: bool = False
    engines_lost: bool = False  # no engine answered for ENGINE_WAIT_S: the run gave up on the files left
    failures: dict[str, str] = field(default_factory=dict)  # uri -> error


def run_index(job, *, job_path: str = "<index>", show_progress: bool = True, max_seconds: float | None = None,
              stop: threading.Event | None = None, on_started: Callable[[dict], None] | None = None) -> IndexResult:
    """Run the job's ``index:`` section to its end (or until ``stop`` is set / ``max_seconds`` pass)."""
    spec = job.index
    root = resolve(spec.out)
    files = list_archive(spec.sources)  # InputError (exit 2) before anything starts
    catalog = Catalog.load(root)
    concepts = [rule.concept for rule in job.index_rules()]
    plan = plan_work(files, catalog, concepts, str(job.model.checkpoint), force=spec.force,
                     retry_failed=spec.retry_failed)
    logger.info("%s: %d files in the sources: %s", root.uri, len(files), plan.summary())
    result = IndexResult(ExitCode.OK, up_to_date=plan.up_to_date, failed_before=plan.failed_skipped)
    if not plan.items:
        logger.info("nothing to do: the index at %s is up to date", root.uri)
        result.exit_code = ExitCode.PARTIAL if plan.failed_skipped else ExitCode.OK
        return result
    stop = stop or threading.Event()
    with ExitStack() as cleanup:
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True)
            cleanup.callback(ray.shutdown)
        install_stop_handlers(stop, cleanup, stopping="stopping; files in flight are done again next run")
        warn_if_outputs_scatter(job)
        metrics = IndexMetrics(job.name)
        serve_job_metrics(metrics, job, job_path, cleanup)
        run = _IndexRun(job, job_path, plan.items, catalog, result, stop, max_seconds, cleanup, metrics)
        if on_started is not None:
            on_started(run.workers)
        with IndexProgress(len(plan.items), enabled=show_progress) as progress:
            try:
                run.loop(progress)
            finally:
                run.flush_rows(force=True)
    logger.info("indexed %d files (%d failed) and %d frames into %s%s", result.done, result.failed, result.frames,
                root.uri, "; stopped early: run the same command again to go on" if result.stopped else "")
    for uri, error in result.failures.items():
        logger.error("%s: %s", uri, error)
    if result.failed or result.failed_before or result.engines_lost:
        result.exit_code = ExitCode.PARTIAL
    return result


class _IndexRun:
    """The work queue of one run and the workers it feeds."""

    def __init__(self, job, job_path: str, items, catalog: Catalog, result: IndexResult, stop: threading.Event,
                 max_seconds: float | None, cleanup: ExitStack, metrics: IndexMetrics):
        from pipeline.engines import start_engines
        from pipeline.index.worker import IndexWorker

        self.job, self.catalog, self.result, self.stop, self.metrics = job, catalog, result, stop, metrics
        self.run_id = uuid.uuid4().hex[:8]
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.queue = deque(items)
        self.attempts: Counter[str] = Counter()
        self.rows: list[dict] = []
        self.last_flush = time.monotonic()
        engines = start_engines(job, job_path, self.run_id, cleanup)
        self.watch = _EngineWatch(engines.handles)
        per_engine = job.index.files_in_flight or 2 * job.engine.max_batch
        self.capacity = per_engine
        self.workers = {}
        for name, actor_name in engines.names.items():
            worker = IndexWorker.options(name=f"{job.name}-{self.run_id}-index-{name}", max_concurrency=per_engine,
                                         num_cpus=0, enable_task_events=False).remote(job, actor_name, self.run_id)
            self.workers[name] = worker
            cleanup.callback(ray.kill, worker)
        ray.get([w.ready.remote() for w in self.workers.values()])
        self.in_flight: dict = {}  # ObjectRef -> (worker name, item)
        self.frames_seen: dict[str, int] = {}

    def loop(self, progress: IndexProgress) -> None:
        stopping = False
        while self.queue or self.in_flight:
            self._watch_engines()
            if not stopping:
                self._hand_out()
            if self.in_flight:
                ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=POLL_S)
            else:  # every engine is down: wait for one to come back
                ready = []
                time.sleep(POLL_S)
            for ref in ready:
                self._collect(ref)
            self.flush_rows()
            self._poll_frames()
            progress.update(self.result.done + self.result.failed, self.result.failed, self.result.frames)
            r = self.result
            self.metrics.update_index(IndexSnapshot(len(self.queue), len(self.in_flight), r.done, r.failed, r.up_to_date,
                                                    r.failed_before, r.frames), dict(self.watch.stats))
            timed_out = self.deadline is not None and time.monotonic() > self.deadline
            if self.watch.all_down_for() > ENGINE_WAIT_S and not self.result.engines_lost:
                logger.error("no engine has answered for %.0f s: giving up; %d files stay for the next run",
                             ENGINE_WAIT_S, len(self.queue) + len(self.in_flight))
                self.result.engines_lost = True
            if (self.stop.is_set() or timed_out or self.result.engines_lost) and not stopping:
                stopping = True
                self.result.stopped = True
                logger.info("stopping: %d files not started stay for the next run; passes in flight are abandoned",
                            len(self.queue))
                self.queue.clear()
                for worker in self.workers.values():
                    worker.stop.remote()

    def _watch_engines(self) -> None:
        for name in self.watch.check():
            logger.warning("engine %s has not answered for %.0f s (its node lost?): its files go back to the queue "
                           "and it takes no more until it answers again", name, ENGINE_DOWN_S)
            # Killing the worker ends its passes for sure (none can still write after its files were handed
            # to another engine); Ray restarts it, and its calls in flight fail: they are requeued in _collect.
            ray.kill(self.workers[name], no_restart=False)

    def _hand_out(self) -> None:
        """Each next file to the live worker with the fewest in flight: a short queue is spread over all engines."""
        load = Counter(name for name, _ in self.in_flight.values())
        live = [name for name in self.workers if name not in self.watch.down]
        while self.queue and live:
            name = min(live, key=lambda n: load[n])
            if load[name] >= self.capacity:
                return
            item = self.queue.popleft()
            self.in_flight[self.workers[name].index.remote(item)] = (name, item)
            load[name] += 1

    def _collect(self, ref) -> None:
        name, item = self.in_flight.pop(ref)
        try:
            row = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # restarting: not the file's fault, ask again
            time.sleep(REFUSED_RETRY_S)
            self.queue.appendleft(item)
            return
        except ray.exceptions.RayActorError as e:
            uri = item.file.shown_uri
            self.attempts[uri] += 1
            if self.attempts[uri] < MAX_ATTEMPTS:
                logger.warning("%s: its worker (%s) died; the file goes back to the queue (%s)", uri, name,
                               str(e).splitlines()[0])
                self.queue.append(item)
                return
            row = catalog_row(item, status="failed", error=f"its worker died {MAX_ATTEMPTS} times while indexing it",
                              duration_s=None, frames=0, fps=None, checkpoint=str(self.job.model.checkpoint),
                              run_id=self.run_id, processing_s=0.0, next_track_id=item.first_track_id,
                              parts=item.keep_parts)
        if row is None:
            return  # abandoned on stop
        self.rows.append(row)
        if row["status"] == DONE:
            self.result.done += 1
        else:
            self.result.failed += 1
            self.result.failures[row["uri"]] = row["error"]

    def flush_rows(self, force: bool = False) -> None:
        if not self.rows or (not force and time.monotonic() - self.last_flush < CATALOG_FLUSH_S):
            return
        self.catalog.append(self.rows, self.run_id)
        self.rows = []
        self.last_flush = time.monotonic()

    def _poll_frames(self) -> None:
        for name, worker in self.workers.items():
            try:
                self.frames_seen[name] = ray.get(worker.frames.remote(), timeout=POLL_S)
            except Exception:
                continue  # a busy or restarting worker: its last count stands
        self.result.frames = sum(self.frames_seen.values())


class _EngineWatch:
    """Pings each engine about once a second; one silent for ENGINE_DOWN_S is down until it answers."""

    def __init__(self, handles: dict[str, Any]):
        self.handles = handles
        now = time.monotonic()
        self.answered = dict.fromkeys(handles, now)  # when each engine last answered
        self.pings: dict[str, tuple[ray.ObjectRef, float]] = {}  # name -> (ping in flight, sent at)
        self.stats: dict[str, Any] = {}  # name -> its latest EngineStats (the ping's answer), for the metrics
        self.down: set[str] = set()

    def check(self) -> list[str]:
        """Collect answers, send new pings; the engines found down just now."""
        now, newly_down = time.monotonic(), []
        for name, handle in self.handles.items():
            ping = self.pings.get(name)
            if ping is not None and ray.wait([ping[0]], timeout=0)[0]:
                del self.pings[name]
                try:
                    self.stats[name] = ray.get(ping[0])
                    self.answered[name] = now
                    if name in self.down:
                        self.down.discard(name)
                        logger.info("engine %s answers again: it takes files again", name)
                except ray.exceptions.RayActorError:
                    pass  # dead or restarting: ask again after PING_S
            ping = self.pings.get(name)
            if ping is None or (now - ping[1] > ENGINE_DOWN_S):
                if ping is None and now - self.answered[name] < PING_S:
                    continue
                self.pings[name] = (handle.stats.remote(), now)
            if name not in self.down and now - self.answered[name] > ENGINE_DOWN_S:
                self.down.add(name)
                newly_down.append(name)
        return newly_down

    def all_down_for(self) -> float:
        """Seconds since the last answer of any engine, when every engine is down; else 0."""
        if len(self.down) < len(self.handles):
            return 0.0
        return time.monotonic() - max(self.answered.values())
