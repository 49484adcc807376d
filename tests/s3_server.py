"""A real S3-compatible server for the tests: moto's, in a subprocess on a free loopback port.

Fixtures (registered for the whole suite by ``pytest_plugins`` in tests/conftest.py):

- ``s3_server`` (session): the running server; ``endpoint``, ``env`` (the AWS_* variables that point
  a client at it, with dummy credentials), ``bucket(name=None) -> "s3://name"`` (creates a fresh,
  empty bucket; without a name, a unique one) and ``filesystem()`` (a pyarrow S3FileSystem on it).
- ``s3_env`` (function): sets ``s3_server.env`` in this process (monkeypatch), so that
  ``operators.storage.resolve("s3://...")`` and the driver reach the server; yields the server.

Ray actors run in other processes and do not see this process's environment: the shared
``ray_session`` fixture starts Ray with ``runtime_env={"env_vars": s3_server.env}``, so every
actor of the test session reaches the server too.

The server is started once per session and stopped at its end; should pytest itself be killed, the
server notices that its parent is gone and exits, so no process outlives the run.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import pytest

logger = logging.getLogger(__name__)

START_GUARD_S = 60.0  # only ends a wait for a server that will never answer
STOP_GUARD_S = 10.0
START_ATTEMPTS = 3  # a free port can be taken by someone else between choosing it and binding it

# Runs moto's server; a watcher thread ends it when the process that started it is gone.
_SERVER_SCRIPT = """
import os, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        """A boto3 S3 client on this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            region_name=self.env["AWS_DEFAULT_REGION"])

    def bucket(self, name: str | None = None) -> str:
        """Create a new, empty bucket and return its URI (``s3://name``); without a name, a unique one."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def filesystem(self):
        """A pyarrow S3FileSystem on this server (what ``resolve`` builds from the environment)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, access_key=self.env["AWS_ACCESS_KEY_ID"],
                                 secret_key=self.env["AWS_SECRET_ACCESS_KEY"], region=self.env["AWS_DEFAULT_REGION"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is serving
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_GUARD_S)


@contextlib.contextmanager
def running_s3_server():
    """Start moto's S3 server, yield an :class:`S3Server`, stop it on exit."""
    with tempfile.TemporaryFile() as log:  # its request log; read back only when it fails to start
        process, endpoint = _start(log)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no waiting on an instance metadata service that is not there
        }
        try:
            yield S3Server(endpoint, env)
        finally:
            _stop(process)


def _start(log) -> tuple[subprocess.Popen, str]:
    for attempt in range(1, START_ATTEMPTS + 1):
        endpoint = f"http://127.0.0.1:{_free_port()}"
        log.seek(0)
        log.truncate()
        process = subprocess.Popen([sys.executable, "-c", _SERVER_SCRIPT, endpoint.rsplit(":", 1)[1]],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_GUARD_S
        while process.poll() is None and not _answers(endpoint) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None and _answers(endpoint):
            return process, endpoint
        _stop(process)
        log.seek(0)
        error = log.read().decode(errors="replace")[-2000:] or "no answer"
        logger.warning("moto's S3 server did not start on %s (attempt %d): %s", endpoint, attempt, error)
    raise RuntimeError(f"moto's S3 server did not start: {error}; check that moto[server] is installed "
                       "(pip install -e '.[test]')")


@pytest.fixture(scope="session")
def s3_server():
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    yield s3_server

