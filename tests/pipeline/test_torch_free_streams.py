"""Stream actors never import torch: their whole import chain, and what crosses Ray to them, is numpy
and plain values. torch costs a stream's process seconds of start-up and hundreds of MB per stream."""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import ExitStack

import numpy as np
import pytest

from operators.synthetic import write_synthetic_video
from tests.job_files import streams_from, write_job


def test_importing_the_stream_side_modules_does_not_import_torch():
    code = ("import sys, pipeline.stream_actor, pipeline.index.worker, operators.track_records\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def _torch_loaded(actor) -> bool:
    # runs inside the actor; this test module (imported there to find this function) imports no torch either
    return "torch" in sys.modules


@pytest.mark.slow  # starts an engine actor and runs a stream to its end
def test_a_stream_actor_processes_frames_without_torch(ray_session, tmp_path):
    from pipeline.engines import start_engines
    from pipeline.jobspec import load_job
    from pipeline.stream_actor import StreamActor
    from sam3_runtime.model import write_random_checkpoint

    ray = ray_session
    video = write_synthetic_video(tmp_path / "v.mp4", frames=6, size=(96, 64), fps=10)
    ckpt = write_random_checkpoint(tmp_path / "tiny")
    path = write_job(tmp_path / "torchless.yaml", checkpoint=ckpt, streams=streams_from({"cam": video}),
                     parquet=tmp_path / "out")
    job = load_job(str(path))
    run_id = uuid.uuid4().hex[:6]
    with ExitStack() as cleanup:
        engines = start_engines(job, str(path), run_id, cleanup)
        actor = StreamActor.options(name=f"torchless-{run_id}-cam").remote(
            job, job.streams[0], engines.names["engine-0"], None, run_id)
        cleanup.callback(ray.kill, actor)
        stats = ray.get(actor.run.remote())
        assert stats.counters.frames_processed == 6, stats
        # the frames came back with objects (masks and all), and the actor's process still has no torch
        assert stats.counters.records > 0, stats
        assert ray.get(actor.__ray_call__.remote(_torch_loaded)) is False
    parquet = sorted((tmp_path / "out").rglob("*.parquet"))
    assert parquet and np.all([p.stat().st_size > 0 for p in parquet])
