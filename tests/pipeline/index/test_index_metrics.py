"""An index job's metrics: files by state and frames, beside the engine families streaming jobs have."""

from __future__ import annotations

from pipeline.engine_actor import EngineStats
from pipeline.index.metrics import FILE_STATES, IndexMetrics, IndexSnapshot
from tests.net import free_port, scrape


def test_files_by_state_frames_and_engines_are_served():
    metrics = IndexMetrics("archive")
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    try:
        engine = EngineStats(started=1.0)
        engine.observe(batch=4, seconds=0.02, objects=3)
        metrics.update_index(IndexSnapshot(queued=5, in_flight=2, done=7, failed=1, up_to_date=90, failed_before=3,
                                           frames=1234), {"engine-0": engine})
        samples = scrape(port)
    finally:
        metrics.close()
    files = {dict(labels)["state"]: value for (name, labels), value in samples.items() if name == "sam3_index_files"}
    assert files == {"queued": 5, "in_flight": 2, "done": 7, "failed": 1, "up_to_date": 90, "failed_before": 3}
    assert set(files) == set(FILE_STATES)
    assert samples[("sam3_index_frames_total", (("job", "archive"),))] == 1234
    assert any(name.startswith("sam3_engine_") for name, _ in samples)
