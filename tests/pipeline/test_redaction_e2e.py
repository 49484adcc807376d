"""A real job whose source URLs hold a password: it shows up nowhere the job writes, serves, logs or displays.

Streams: a camera that cannot be reached (``rtsp://admin:${CAM_PASSWORD}@127.0.0.1:<closed port>``,
reconnecting with backoff), an HTTP clip whose first request fails (a ``stream_reconnect``, then
records), an HTTP audio-only file (a ``stream_error`` quoting the URL) and a plain file.
"""

from __future__ import annotations

import logging
import urllib.request
import wave
from pathlib import Path

import ray
from rich.console import Console

from operators.sinks.parquet_sink import open_dataset
from operators.synthetic import write_synthetic_video
from pipeline.jobspec import load_job
from pipeline.progress import JobProgress, summary_table
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import BackgroundJob, wait_for
from tests.http_files import http_files
from tests.job_files import streams_from, write_job
from tests.net import free_port

SECRET = "S3cretPa55"
VARIABLE = "${CAM_PASSWORD}"  # what the job file holds: the loader puts the password in


def _write_tone(path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(16000))
    return path


def _ray_logs() -> str:
    """Everything the job's Ray workers (the stream actors among them) wrote to their log files."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker-*")) if p.is_file())


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()




def test_a_password_in_source_urls_is_shown_nowhere(ray_session, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("CAM_PASSWORD", SECRET)
    media = tmp_path / "media"
    media.mkdir()
    write_synthetic_video(media / "clip.mp4", frames=6, size=(96, 72), fps=10)
    _write_tone(media / "tone.wav")
    closed, port = free_port(), free_port()
    scrapes = []
    with http_files(media, fail_first="clip.mp4") as host:
        sources = {"cam": f"rtsp://admin:{VARIABLE}@127.0.0.1:{closed}/stream",
                   "web": f"http://viewer:{VARIABLE}@{host}/clip.mp4?token={VARIABLE}",
                   "audio": f"http://viewer:{VARIABLE}@{host}/tone.wav",
                   "clip": media / "clip.mp4"}
        path = write_job(tmp_path / "secrets.yaml", checkpoint=write_random_checkpoint(media / "tiny"),
                         streams=streams_from(sources), max_batch=4, parquet=tmp_path / "out", parquet_flush_rows=10,
                         metrics_port=port)
        assert SECRET not in path.read_text()  # the job file names the variable, never the password

        caplog.set_level(logging.INFO)
        running = BackgroundJob(path)
        running.start()
        try:
            # the camera keeps failing: more than two reconnect waits in its actor's log
            wait_for(lambda: _ray_logs().count(f"127.0.0.1:{closed}/stream, attempt") > 2, "three camera reconnects")
            # the other streams ended: the clip after its reconnect, the audio with its error
            wait_for(lambda: all(f'sam3_stream_state{{job="secrets",state="{state}",stream="{sid}"}} 1.0' in
                                 (scrapes.append(_scrape(port)) or scrapes[-1])
                                 for sid, state in (("web", "finished"), ("audio", "failed"), ("clip", "finished"))),
                     "web and clip finished, audio failed")
        finally:
            running.stop_streams()
            running.join()
    result = running.result()
    assert result.streams["web"].counters.reconnects == 1 and result.streams["web"].counters.records > 0

    events = open_dataset(tmp_path / "out", "events").to_table().to_pylist()
    tracks = open_dataset(tmp_path / "out", "tracks").to_table().to_pylist()
    by_type = {(e["stream_id"], e["type"]): e for e in events}
    # what the redaction leaves is still there to read: user, host and path, the password masked
    assert f"rtsp://admin:***@127.0.0.1:{closed}/stream" in by_type[("cam", "stream_start")]["details"]
    assert f"http://viewer:***@{host}/clip.mp4?token=***" in by_type[("web", "stream_start")]["details"]
    assert "Cannot open video stream http://viewer:***@" in by_type[("web", "stream_reconnect")]["error"]
    assert f"http://viewer:***@{host}/tone.wav" in by_type[("audio", "stream_error")]["error"]
    assert {t["source"] for t in tracks if t["stream_id"] == "web"} == {f"http://viewer:***@{host}/clip.mp4?token=***"}
    resume_points = sorted((tmp_path / "out" / "_checkpoints").rglob("*.json"))
    assert {p.stem for p in resume_points} >= {"cam", "web", "audio", "clip"}

    job = load_job(str(path))
    live = Console(record=True, width=240)
    live.print(JobProgress(job.name, enabled=False).table(result.streams))
    summary = Console(record=True, width=240)
    summary_table(job, result.streams, console=summary)
    assert "http://viewer:***@" in summary.export_text()  # the audio stream's error, shown masked
    captured = capsys.readouterr()
    shown = {
        "events": repr(events), "track records": repr(tracks), "metrics": "\n".join(scrapes),
        "resume points": "\n".join(p.read_text() for p in resume_points), "progress table": live.export_text(),
        "summary table": summary.export_text(), "driver log": caplog.text, "stdout": captured.out,
        "stderr": captured.err, "stream actor logs": _ray_logs(), "final stats": repr(result.streams),
    }
    assert f"127.0.0.1:{closed}/stream" in shown["stream actor logs"]
    for where, text in shown.items():
        assert SECRET not in text, f"the password shows in the {where}"
