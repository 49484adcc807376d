"""``ray job submit`` end to end, as the README tells a user to do it: a Ray head of its own
(``ray start --head`` with token authentication and the dashboard's job server), a copy of the
checkout as the working dir, and ``sam3-stream run`` as the entrypoint.

The head lives in its own temp dir on its own ports, so it never meets the ``ray_session``
instance other tests use; ``ray stop`` would stop every Ray process on the machine, so the
fixture stops exactly the processes its head started instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from operators.synthetic import write_synthetic_video
from sam3_runtime.model import write_random_checkpoint
from tests.job_files import streams_from, write_job

REPO = Path(__file__).resolve().parents[2]
# Only end waits that would otherwise hang; nothing here depends on how fast the machine is.
HEAD_START_GUARD_S = 180.0
JOB_GUARD_S = 300.0
STOP_GUARD_S = 60.0


@dataclass(frozen=True)
class RayHead:
    dashboard: str  # what --address takes: the job server's http URL
    token: str
    env: dict[str, str]  # a client's environment: token authentication on, this head's token


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))  # Ray binds on every interface, so the port must be free on all of them
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    return children


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it; Ray's workers start sessions of their own, so the
    process group alone would miss them, their parent (the raylet) does not."""
    children, tree, todo = _children_by_parent(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop_head(head: subprocess.Popen) -> None:
    """SIGTERM lets ``ray start --block`` stop its own processes; whatever outlives it is killed."""
    tree = _process_tree(head.pid)
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GUARD_S
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in tree:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    head.wait(timeout=STOP_GUARD_S)
    deadline = time.monotonic() + STOP_GUARD_S
    while (left := [p for p in tree if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of the test's Ray head still alive: {left}"


def _authorised(dashboard: str, path: str, token: str) -> urllib.request.Request:
    return urllib.request.Request(f"{dashboard}{path}", headers={"Authorization": f"Bearer {token}"})


def _wait_for_job_server(head: subprocess.Popen, dashboard: str, token: str, log: Path) -> None:
    request = _authorised(dashboard, "/api/jobs/", token)
    deadline = time.monotonic() + HEAD_START_GUARD_S
    while True:
        if head.poll() is not None:
            raise AssertionError(f"ray start --head exited with {head.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the job server did not answer within {HEAD_START_GUARD_S} s:\n"
                                 f"{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_head(request):
    # a short root: Ray's unix sockets live under it and socket paths may not exceed ~107 bytes
    root = Path(tempfile.mkdtemp(prefix="sam3-rj-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    gcs, dashboard, agent_http, agent_grpc, runtime_env, metrics, client = _free_ports(7)
    log = root / "head.log"
    command = ["ray", "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "4",
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
               "--ray-client-server-port", str(client), "--temp-dir", str(root / "ray"), "--disable-usage-stats"]
    with log.open("wb") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: _stop_head(head))  # before any wait, so a failed start is cleaned up too
    url = f"http://127.0.0.1:{dashboard}"
    _wait_for_job_server(head, url, token, log)
    return RayHead(url, token, env)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit-media")
    good = write_synthetic_video(root / "good.mp4", frames=8, size=(160, 120), fps=10)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {"good": good, "corrupt": corrupt, "ckpt": write_random_checkpoint(root / "tiny")}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """What ``--working-dir .`` uploads from a user's clone: the tracked files."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    copy = tmp_path_factory.mktemp("checkout")
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():  # a file deleted in the working tree is not uploaded either
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    return copy


def _write_job(checkout: Path, media, name: str, streams: dict[str, Path], out: Path) -> str:
    relative = f"jobs/{name}.yaml"  # relative to the working dir, as a job file in the clone would be
    (checkout / "jobs").mkdir(exist_ok=True)
    write_job(checkout / relative, checkpoint=media["ckpt"], streams=streams_from(streams), max_batch=1, parquet=out,
              parquet_flush_rows=50)
    return relative


def _ray(head: RayHead, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", *args], env=head.env, cwd=cwd, capture_output=True, text=True, timeout=JOB_GUARD_S)


def _submit(head: RayHead, checkout: Path, submission_id: str, job_file: str) -> subprocess.CompletedProcess:
    return _ray(head, "job", "submit", "--address", head.dashboard, "--submission-id", submission_id,
                "--working-dir", ".", "--", "sam3-stream", "run", job_file, cwd=checkout)


def _job_info(head: RayHead, submission_id: str) -> dict:
    """What the job server records about a job (``status``, ``message``, ...), from its REST API."""
    with urllib.request.urlopen(_authorised(head.dashboard, f"/api/jobs/{submission_id}", head.token),
                                timeout=30) as response:
        return json.load(response)


def _summary_row(logs: str, stream_id: str) -> list[str]:
    """The cells of ``stream_id``'s row in the summary table the job printed at its end."""
    for line in logs.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells and cells[0] == stream_id:
            return cells
    raise AssertionError(f"no summary row for {stream_id} in the job's logs:\n{logs}")


def _rows(path: Path, stream_id: str) -> list[dict]:
    rows = ds.dataset(path, partitioning="hive").to_table().to_pylist()
    return [r for r in rows if str(r["stream_id"]) == stream_id]


@pytest.mark.slow
def test_submitted_job_runs_to_completion(ray_head, media, checkout, tmp_path):
    out = tmp_path / "out"
    job_file = _write_job(checkout, media, "submitted", {"cam-a": media["good"]}, out)
    submission_id = f"sam3-ok-{secrets.token_hex(3)}"
    done = _submit(ray_head, checkout, submission_id, job_file)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _job_info(ray_head, submission_id)["status"] == "SUCCEEDED"

    logs = _ray(ray_head, "job", "logs", "--address", ray_head.dashboard, submission_id).stdout
    assert "job submitted: summary" in logs
    _, state, frames, tracks, records, events, *_ = _summary_row(logs, "cam-a")
    assert (state, frames) == ("finished", "8")
    # the summary the user reads and the dataset the job wrote agree
    track_rows, event_rows = _rows(out / "tracks", "cam-a"), _rows(out / "events", "cam-a")
    assert track_rows, "the random model at threshold 0.1 should publish tracks"
    assert len(track_rows) == int(records) and len(event_rows) == int(events)
    assert {r["frame_index"] for r in track_rows} <= set(range(8))
    assert len({r["track_id"] for r in track_rows}) == int(tracks)
    types = [r["type"] for r in event_rows]
    assert types.count("stream_start") == 1 and types.count("stream_end") == 1
    assert "stream_error" not in types


@pytest.mark.slow
def test_a_failed_stream_fails_the_job(ray_head, media, checkout, tmp_path):
    out = tmp_path / "out"
    job_file = _write_job(checkout, media, "failing", {"cam-a": media["good"], "bad": media["corrupt"]}, out)
    submission_id = f"sam3-failed-{secrets.token_hex(3)}"
    done = _submit(ray_head, checkout, submission_id, job_file)
    assert done.returncode != 0, done.stdout + done.stderr
    info = _job_info(ray_head, submission_id)
    assert info["status"] == "FAILED"
    assert "exit code 3" in info["message"]  # sam3-stream's "some streams failed", not a crash

    logs = _ray(ray_head, "job", "logs", "--address", ray_head.dashboard, submission_id).stdout
    assert "stream bad failed" in logs
    assert _summary_row(logs, "bad")[1] == "failed"
    assert _summary_row(logs, "cam-a")[1:3] == ["finished", "8"]  # the other stream carried on
    assert "stream_error" in {r["type"] for r in _rows(out / "events", "bad")}
    assert "stream_end" in {r["type"] for r in _rows(out / "events", "cam-a")}
