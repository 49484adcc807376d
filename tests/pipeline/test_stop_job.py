"""Stop always works, through the command line: ``--max-seconds`` and SIGTERM end a job whose only stream
is stalled or still connecting (exit 0, a ``stream_end`` event), and a second SIGINT while the job drains
aborts at once (exit 130, one line, no traceback).

The jobs join the test session's Ray (``RAY_ADDRESS``); tests/pipeline/test_orphans.py covers jobs that
start their own. The bound itself is checked as "ended before the guard", never as a measured time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from operators.sinks.parquet_sink import open_dataset
from operators.synthetic import write_synthetic_video
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S, wait_for
from tests.job_files import streams_from, write_job
from tests.operators.test_stop_live_source import stalling_server


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop_job")
    return {"ts": write_synthetic_video(root / "live.ts", frames=40, fps=10).read_bytes(),
            "ckpt": write_random_checkpoint(root / "tiny")}


class Command:
    """``sam3-stream run`` as a subprocess on the test session's Ray, its output in a file."""

    def __init__(self, ray_session, tmp_path: Path, media: dict, url: str, *args: str) -> None:
        self.out = tmp_path / "out"
        job = write_job(tmp_path / "job.yaml", name=tmp_path.name[:24], checkpoint=media["ckpt"],
                        streams=streams_from({"cam": url}), parquet=self.out, parquet_flush_rows=10)
        env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
        self.log = tmp_path / "run.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress",
                                          *args], env=env, stdout=log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ended(self) -> int:
        try:
            return self.proc.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the job did not end within {HANG_GUARD_S} s:\n{self.text()}") from None

    def events(self) -> list[dict]:
        return open_dataset(self.out, "events").to_table().to_pylist()


def test_max_seconds_ends_a_job_whose_only_stream_is_stalled(ray_session, tmp_path, media):
    with stalling_server(media["ts"], send_bytes=len(media["ts"]) // 2) as server:
        job = Command(ray_session, tmp_path, media, server["url"], "--max-seconds", "12")
        assert job.ended() == 0, job.text()
    types = [e["type"] for e in job.events()]
    assert types[0] == "stream_start" and types[-1] == "stream_end", types
    assert "stream_reconnect" in types  # the stall became a reconnect: its read timeout ended the silent connection
    assert server["connections"] >= 2


def test_sigterm_ends_a_job_whose_only_stream_is_connecting(ray_session, tmp_path, media):
    with stalling_server(None) as server:  # accepts the connection, never answers
        job = Command(ray_session, tmp_path, media, server["url"])
        wait_for(lambda: server["connections"] >= 1 or job.proc.poll() is not None, "the stream connecting")
        job.proc.send_signal(signal.SIGTERM)
        assert job.ended() == 0, job.text()
    assert [e["type"] for e in job.events()] == ["stream_start", "stream_end"]
    assert "received SIGTERM: finishing gracefully" in job.text()


def test_a_second_sigint_while_draining_aborts_at_once(ray_session, tmp_path, media):
    with stalling_server(None) as server:
        job = Command(ray_session, tmp_path, media, server["url"])
        wait_for(lambda: server["connections"] >= 1 or job.proc.poll() is not None, "the stream connecting")
        job.proc.send_signal(signal.SIGINT)
        # the stream waits out its connect timeout before it can stop: the job is still draining then
        wait_for(lambda: "finishing gracefully" in job.text() or job.proc.poll() is not None, "the graceful stop")
        job.proc.send_signal(signal.SIGINT)
        assert job.ended() == 130, job.text()
    text = job.text()
    assert "Traceback" not in text, text
    aborted = [line for line in text.splitlines() if line.startswith("sam3-stream: aborted")]
    assert len(aborted) == 1 and "--resume" in aborted[0], text
