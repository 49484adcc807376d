"""No process a job starts survives it, Ray's own local processes included: after a normal end, after a
SIGTERM, and after a SIGKILL of ``sam3-stream run`` (which no handler can see).

Each test runs ``python -m pipeline.cli run`` as a subprocess that starts its own local Ray, records
every process under it while it runs (raylet, gcs_server, Ray's agents, ``ray::`` workers), and checks
that none of them is alive once the command is gone. Ray's session directories in /tmp may stay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operators.synthetic import write_synthetic_video
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S, wait_for
from tests.job_files import streams_from, write_job

pytestmark = pytest.mark.slow  # each test starts a Ray of its own (tens of seconds on a small machine)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("orphans")
    return {"video": write_synthetic_video(root / "v.mp4", frames=10, size=(96, 72), fps=10),
            "ckpt": write_random_checkpoint(root / "tiny")}


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, name) of every living (not zombie) process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat.rsplit(b")", 1)[1].split()
            if fields[0] != b"Z":
                out[int(name)] = (int(fields[1]), cmd.strip())
    return out


def _tree(root: int) -> dict[int, str]:
    processes = _parents()
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, cmd) in processes.items():
            if ppid == parent and pid not in found:
                found[pid] = cmd
                todo.append(pid)
    return found


class Job:
    """``sam3-stream run`` as a subprocess, and every process seen under it while it ran."""

    def __init__(self, tmp_path: Path, media: dict, loop: bool) -> None:
        job = write_job(tmp_path / "job.yaml", name=tmp_path.name[:20].replace("[", "-").replace("]", ""),
                        checkpoint=media["ckpt"], streams=streams_from({"cam": media["video"]}, loop=loop),
                        parquet=tmp_path / "out", parquet_flush_rows=10)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own, started by the job
        self.log = tmp_path / "job.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        self.seen: dict[int, str] = {}

    def look(self) -> dict[int, str]:
        self.seen.update(_tree(self.proc.pid))
        return self.seen

    def wait_running(self) -> None:
        """Until Ray's processes and the job's actors are all there."""
        wanted = ("raylet", "gcs_server", "ray::StreamActor", "ray::EngineActor")
        wait_for(lambda: self.proc.poll() is None and all(any(w in cmd for cmd in self.look().values())
                                                          for w in wanted) or self.proc.poll() is not None,
                 "Ray and the job's actors")
        assert self.proc.poll() is None, self.log.read_text()

    def survivors(self) -> dict[int, str]:
        alive = _parents()
        return {pid: cmd for pid, cmd in self.seen.items() if pid in alive and alive[pid][1] == cmd}


def _ended_without_survivors(job: Job) -> int:
    while job.proc.poll() is None:  # watch to the end: processes started late count too
        job.look()
        time.sleep(0.1)
    code = job.proc.wait(HANG_GUARD_S)
    names = " ".join(job.seen.values())
    assert "raylet" in names and "ray::" in names, job.seen  # it did start Ray: the check below means something
    # what the job left is stopped as it ends: nothing it started is alive once it is gone
    wait_for(lambda: not job.survivors(), "the job's processes to end", guard_s=30.0)
    return code


def test_no_process_survives_a_normal_end(tmp_path, media):
    job = Job(tmp_path, media, loop=False)
    job.wait_running()
    assert _ended_without_survivors(job) == 0, job.log.read_text()


def test_no_process_survives_a_sigterm(tmp_path, media):
    job = Job(tmp_path, media, loop=True)
    job.wait_running()
    job.proc.send_signal(signal.SIGTERM)
    assert _ended_without_survivors(job) == 0, job.log.read_text()


def test_no_process_survives_a_sigkill_of_the_command(tmp_path, media):
    job = Job(tmp_path, media, loop=True)
    job.wait_running()
    job.proc.kill()  # SIGKILL: no handler runs in the process the user started
    assert _ended_without_survivors(job) == -signal.SIGKILL
