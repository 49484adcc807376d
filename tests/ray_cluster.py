"""A real two-node Ray cluster on loopback, started the way a user starts one: ``ray start``.

``two_node_cluster()`` starts a head node and a worker node as two ``ray start --block`` processes,
each with its own ``--temp-dir`` (so each node's processes can be told apart), with token
authentication on (``RAY_AUTH_MODE=token``, a fresh token in a file named by
``RAY_AUTH_TOKEN_PATH``, as Ray 2.60 expects of a cluster anyone on the network could reach).
Every port is chosen free, so the cluster never collides with another Ray instance on the machine.

The test talks to the cluster only through subprocesses given :attr:`RayCluster.env`. ``ray stop``
is never used: it stops every Ray process of the machine, other people's too. Instead each node is
stopped through its own ``ray start --block`` process (SIGTERM: it shuts its node down), and
anything still alive below it afterwards is killed. :meth:`RayCluster.kill_worker_node` is a lost
machine: SIGKILL to the worker node's raylet and everything it started, no clean-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.net import free_port

logger = logging.getLogger(__name__)

START_GUARD_S = 120.0  # only ends a wait for a node that will never come up
STOP_GUARD_S = 30.0




def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's workers start sessions of their own: a process group misses them)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (a node's temp dir names all of its own)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class RayNode:
    name: str
    temp_dir: str
    process: subprocess.Popen
    log_path: str
    pids: set[int] = field(default_factory=set)  # every process seen under this node (for the orphan check)

    def raylet_pid(self) -> int | None:
        for pid in processes_mentioning(self.temp_dir):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0", 1)[0].endswith(b"/raylet"):
                    return pid
        return None

    def remember(self) -> None:
        self.pids.update([self.process.pid, *descendants(self.process.pid), *processes_mentioning(self.temp_dir)])

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]


@dataclass
class RayCluster:
    address: str  # 127.0.0.1:PORT, what RAY_ADDRESS takes
    env: dict[str, str]  # this process's environment plus the cluster's address and token settings
    head: RayNode
    worker: RayNode
    base_dir: str

    def kill_worker_node(self) -> list[int]:
        """A lost machine: SIGKILL the worker node's raylet and every process of that node at once."""
        node = self.worker
        node.remember()
        victims = sorted(node.pids - {os.getpid()})
        _kill(victims)
        logger.info("killed the worker node: %d processes", len(victims))
        return victims

    def leftovers(self) -> list[int]:
        """Processes of this cluster still alive (after :func:`two_node_cluster` ended: orphans)."""
        alive = processes_mentioning(self.base_dir)
        for node in (self.head, self.worker):
            for pid in node.pids:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
        return sorted(set(alive))


def _start_node(name: str, args: list[str], temp_dir: str, env: dict[str, str], base_dir: str) -> RayNode:
    log_path = os.path.join(base_dir, f"{name}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["ray", "start", "--block", f"--temp-dir={temp_dir}", *args], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    node = RayNode(name, temp_dir, process, log_path)
    deadline = time.monotonic() + START_GUARD_S
    while "Ray runtime started" not in node.log():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_node(node)
            raise RuntimeError(f"the Ray {name} node did not start: {node.log()}")
        time.sleep(0.2)
    node.remember()
    return node


def _stop_node(node: RayNode) -> None:
    node.remember()
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        try:
            node.process.wait(STOP_GUARD_S)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(STOP_GUARD_S)
    deadline = time.monotonic() + STOP_GUARD_S
    while time.monotonic() < deadline and processes_mentioning(node.temp_dir):
        time.sleep(0.2)
    _kill(processes_mentioning(node.temp_dir))  # whatever ignored the shutdown


@contextlib.contextmanager
def two_node_cluster(head_cpus: int = 2, worker_cpus: int = 2, extra_env: dict[str, str] | None = None
                     ) -> Iterator[RayCluster]:
    """Start a head and a worker node on 127.0.0.1 with token authentication; stop both on exit."""
    base_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token_path = os.path.join(base_dir, "auth_token")
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(secrets.token_hex(32))
    env = {**os.environ, **(extra_env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path,
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes: list[RayNode] = []
    try:
        head = _start_node("head", [
            "--head", f"--port={port}", f"--num-cpus={head_cpus}", '--resources={"head": 1}',
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", "--include-dashboard=false", *common], os.path.join(base_dir, "h"), env, base_dir)
        nodes.append(head)
        address = f"127.0.0.1:{port}"
        worker = _start_node("worker", [
            f"--address={address}", f"--num-cpus={worker_cpus}", '--resources={"worker_node": 1}',
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}", *common],
            os.path.join(base_dir, "w"), env, base_dir)
        nodes.append(worker)
        yield RayCluster(address, {**env, "RAY_ADDRESS": address}, head, worker, base_dir)
    finally:
        for node in reversed(nodes):
            _stop_node(node)
        shutil.rmtree(base_dir, ignore_errors=True)
