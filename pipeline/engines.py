"""Starting a job's engine actors: one per ``engine.replicas``, each on a GPU when the cluster has them.

Shared by streaming jobs (``pipeline.driver``) and index jobs (``pipeline.index.run``), so both
check the cluster's resources the same way and warn the same way about a random model.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import ray

logger = logging.getLogger(__name__)


@dataclass
class Engines:
    handles: dict[str, Any]  # engine-0, engine-1, ... -> EngineActor handle
    names: dict[str, str]  # engine-0, ... -> the actor's name in the cluster
    model_id: str


def start_engines(job, job_path: str, run_id: str, cleanup: ExitStack) -> Engines:
    """Start the engines, wait until they loaded the model, and have ``cleanup`` kill them."""
    from pipeline.engine_actor import EngineActor, EngineSettings

    use_gpu = job.model.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
    check_resources(job, job_path, use_gpu)
    handles, names = {}, {}
    for i in range(job.engine.replicas):
        name = f"engine-{i}"
        names[name] = f"{job.name}-{run_id}-{name}"
        # enable_task_events=False: per-frame calls would otherwise pile up task records in Ray's GCS
        options = dict(name=names[name], num_gpus=1 if use_gpu else 0, num_cpus=job.engine.num_cpus,
                       enable_task_events=False)
        if job.engine.replicas > 1:  # one per node where it can: a lost node then takes only its own engines
            options["scheduling_strategy"] = "SPREAD"
        handles[name] = EngineActor.options(**options).remote(EngineSettings.from_job(job), name=name)
    cleanup.callback(lambda: [ray.kill(a) for a in handles.values()])
    infos = ray.get([e.ready.remote() for e in handles.values()])
    if any(i["random_weights"] for i in infos):
        from sam3_runtime.model import REAL_CHECKPOINT_HINT

        logger.warning("running the tiny RANDOM model %s: its tracks mean nothing; %s (model.checkpoint in %s)",
                       job.model.checkpoint, REAL_CHECKPOINT_HINT, job_path)
    return Engines(handles, names, infos[0]["model"])


def check_resources(job, job_path: str, use_gpu: bool) -> None:
    """Engines that ask for more than the cluster has would wait for it forever."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    replicas = job.engine.replicas
    if replicas * job.engine.num_cpus > cpus:
        raise ValueError(f"{job_path}: engine: {replicas} replica(s) x num_cpus {job.engine.num_cpus} need "
                         f"{replicas * job.engine.num_cpus} CPUs but the Ray cluster has {cpus:g}; lower "
                         "engine.num_cpus or engine.replicas, or add nodes")
    if use_gpu and replicas > gpus:
        raise ValueError(f"{job_path}: engine.replicas: {replicas} engines need one GPU each but the Ray cluster has "
                         f"{gpus:g}; set engine.replicas to at most {gpus:g}, or model.device: cpu")
