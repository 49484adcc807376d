"""An index run on a real two-node Ray cluster loses its worker node half way: every file is still
indexed exactly once.

The cluster is two ``ray start`` processes on loopback with token authentication
(``tests/ray_cluster.py``); the run is a driver process of its own, as a user runs one, on a job file
with an ``index:`` section run by ``sam3-stream run JOB.yaml``, with the archive and the dataset on the tests' S3 server (a multi-node run keeps its dataset in
object storage). The shared ``ray_session`` fixture is not used: this process never joins a cluster.
"""

from __future__ import annotations

import glob
import logging
import subprocess
import sys
import threading
import time

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from operators.index_tables import SCHEMAS
from operators.synthetic import write_synthetic_video
from pipeline.exit_codes import ExitCode
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S, wait_for
from tests.ray_cluster import two_node_cluster

logger = logging.getLogger(__name__)

FILES = 8
JOB = """
name: idx2
model: {{checkpoint: {checkpoint}, device: cpu}}
engine: {{replicas: 2, num_cpus: 1, max_batch: 2, max_wait_ms: 10, hotstart: "off"}}
watchlists:
  shapes:
    - {{concept: red square, threshold: 0.1}}
index: {{sources: ["{sources}"], out: "{out}", watchlist: shapes, files_in_flight: 2}}
"""


class _Output:
    """The run's output lines, each with the time it arrived."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process) -> None:
        for line in process.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)

    def tail(self) -> str:
        self._thread.join(5)
        return "\n".join(line for _, line in self.lines[-60:])


def _hosts_engine(node) -> bool:
    """The node runs an engine actor (Ray names an actor's class at the top of its worker's log)."""
    for path in glob.glob(f"{node.temp_dir}/session_*/logs/worker-*.out"):
        with open(path, errors="replace") as f:
            if ":actor_name:EngineActor" in f.read(4096):
                return True
    return False


def _table(fs, out: str, name: str) -> list[dict]:
    return ds.dataset(f"{out.removeprefix('s3://')}/{name}", format="parquet", schema=SCHEMAS[name],
                      filesystem=fs).to_table().to_pylist()


def _parts(fs, out: str, name: str) -> int:
    infos = fs.get_file_info(pafs.FileSelector(f"{out.removeprefix('s3://')}/{name}", allow_not_found=True))
    return sum(i.base_name.endswith(".parquet") for i in infos)


@pytest.mark.slow
def test_losing_the_worker_node_mid_run_still_indexes_every_file_once(s3_server, tmp_path):
    bucket_uri = s3_server.bucket()
    bucket = bucket_uri.removeprefix("s3://")
    client, fs = s3_server.client(), s3_server.filesystem()
    video = tmp_path / "v.mp4"
    for i in range(FILES):  # one content, many keys: the same work per file
        if i == 0:
            write_synthetic_video(video, frames=20, size=(160, 120), fps=10)
        client.upload_file(str(video), bucket, f"archive/v{i:02d}.mp4")
    out = f"{bucket_uri}/dataset"
    job_path = tmp_path / "job.yaml"
    job_path.write_text(JOB.format(checkpoint=write_random_checkpoint(tmp_path / "tiny"),
                                   sources=f"{bucket_uri}/archive/", out=out))
    command = [sys.executable, "-m", "pipeline.cli", "run", str(job_path), "--no-progress"]  # sam3-stream run

    # head: 1 CPU, room for one engine; the lost node's engine has nowhere to restart
    with two_node_cluster(head_cpus=1, worker_cpus=2, extra_env=s3_server.env) as cluster:
        process = subprocess.Popen(command, env=cluster.env, cwd=tmp_path,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        output = _Output(process)
        try:
            wait_for(lambda: _hosts_engine(cluster.worker) and _hosts_engine(cluster.head),
                     "engine on each node (engine.replicas are spread over the nodes)")
            wait_for(lambda: _parts(fs, out, "events") >= 2 or process.poll() is not None, "two files done")
            assert process.poll() is None, f"the run ended before the node was lost:\n{output.tail()}"
            done_before = _parts(fs, out, "events")
            killed_at = time.monotonic()
            cluster.kill_worker_node()
            code = process.wait(HANG_GUARD_S)
            ended_at = time.monotonic()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        log = output.tail()
        lost_at = output.first("has not answered")
        logger.warning("worker node killed with %d of %d files done; engine taken as lost after %s s; run ended "
                       "%.1f s after the kill", done_before, FILES,
                       "?" if lost_at is None else f"{lost_at - killed_at:.1f}", ended_at - killed_at)
        assert code == ExitCode.OK, log
        assert done_before < FILES

    assert cluster.leftovers() == [], "processes of the cluster outlived it"
    uris = [f"{bucket_uri}/archive/v{i:02d}.mp4" for i in range(FILES)]
    rows = _table(fs, out, "files")
    assert sorted(r["uri"] for r in rows) == uris and {r["status"] for r in rows} == {"done"}  # one row each
    assert {r["frames"] for r in rows} == {20}
    ends = sorted(e["stream_id"] for e in _table(fs, out, "events") if e["type"] == "stream_end")
    assert ends == uris  # no file's rows twice, none missing
    tracks = _table(fs, out, "tracks")
    keys = [(t["stream_id"], t["track_id"], t["frame_index"]) for t in tracks]
    assert tracks and len(keys) == len(set(keys))
    assert _parts(fs, out, "tracks") == FILES
