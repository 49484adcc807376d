"""IndexWorker: one per engine; indexes several archive files at once on that engine.

Each call of :meth:`IndexWorker.index` is one file (one work item) on its own engine session,
run on one of the actor's threads (``max_concurrency`` = files in flight per engine), so the
engine's batches fill with frames of several files. A worker that dies loses only the passes
it had in flight, which wrote nothing: the coordinator hands their files out again.
"""

from __future__ import annotations

import logging
import threading

import ray

from operators.index_tables import file_key
from operators.storage import resolve
from pipeline.engine_link import EngineLink
from pipeline.index.catalog import WorkItem
from pipeline.index.file_pass import PassStopped, run_pass

logger = logging.getLogger(__name__)


@ray.remote(max_restarts=-1, max_task_retries=0)
class IndexWorker:
    def __init__(self, job, engine_name: str, run_id: str):
        # the engine comes by name, so a restarted worker (or engine) finds it again
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.job, self.run_id = job, run_id
        self.engine = ray.get_actor(engine_name)
        self.root = resolve(job.index.out)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._frames = 0
        self._model_id: str | None = None

    def ready(self) -> str:
        """The engine's model id, once the engine answers."""
        if self._model_id is None:
            self._model_id = ray.get(self.engine.ready.remote())["model"]
        return self._model_id

    def stop(self) -> None:
        """Abandon the passes in flight (they write nothing) and take no more."""
        self._stop.set()

    def frames(self) -> int:
        """Frames processed so far by this worker, all files together."""
        return self._frames

    def _count_frame(self) -> None:
        with self._lock:
            self._frames += 1

    def index(self, item: WorkItem) -> dict | None:
        """Index one file; its catalog row, or None when the run is stopping."""
        if self._stop.is_set():
            return None
        rules = [r for r in self.job.index_rules() if r.concept in item.concepts]
        session = f"index-{self.run_id}-{file_key(item.file.shown_uri)}"
        link = EngineLink(self.engine, session, [r.concept for r in rules], min(r.threshold for r in rules),
                          window=self.job.engine.max_in_flight)
        try:
            return run_pass(item, job=self.job, link=link, model_id=self.ready(), run_id=self.run_id, root=self.root,
                            stop=self._stop, on_frame=self._count_frame)
        except PassStopped:
            return None
