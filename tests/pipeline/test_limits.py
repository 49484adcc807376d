"""Resource limits of a job file: too many streams or concepts are refused in one located line
(exit 2) while the file is read, before anything is started or validated item by item."""

from __future__ import annotations

import tracemalloc

import pytest

from pipeline.cli import main
from pipeline.jobspec import JobSpecError, parse_job

BASE = """
name: limits
model: {{checkpoint: /nonexistent/tiny, device: cpu}}
{limits}
watchlists:
  w:
{rules}
streams:
{streams}
"""


def _job(streams: int = 1, concepts: int = 1, limits: str = "") -> str:
    rules = "\n".join(f"    - {{concept: thing {i}}}" for i in range(concepts))
    lines = "\n".join(f"  - {{id: cam-{i}, source: 'rtsp://10.0.{i // 250}.{i % 250}/s', watchlist: w}}"
                      for i in range(streams))
    return BASE.format(limits=limits, rules=rules, streams=lines)


@pytest.mark.slow
def test_ten_thousand_streams_are_refused_in_one_line_and_bounded_memory(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text(_job(streams=10_000))
    tracemalloc.start()
    try:
        assert main(["run", str(path)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{path}:" in lines[0] and "streams: 10000 streams, more than limits.max_streams (1000)" in lines[0]
    # the parsed file, not 10,000 validated streams (let alone actors): well under what one stream costs
    assert peak < 300 * 2**20, peak


def test_a_watchlist_of_a_thousand_concepts_is_refused(tmp_path, capsys):
    path = tmp_path / "concepts.yaml"
    path.write_text(_job(concepts=1000))
    assert main(["run", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "watchlists.w: 1000 concepts, more than limits.max_concepts (256)" in line
    assert "detector once per concept on every frame" in line  # says why the limit is there


def test_limits_are_settable_and_checked():
    job = parse_job(_job(streams=3, concepts=300, limits="limits: {max_streams: 3, max_concepts: 300}"))
    assert len(job.streams) == 3 and job.limits.max_concepts == 300
    with pytest.raises(JobSpecError) as caught:
        parse_job(_job(streams=3, limits="limits: {max_streams: 2}"), filename="job.yaml")
    assert str(caught.value).startswith("job.yaml:") and "3 streams, more than limits.max_streams (2)" in str(caught.value)
    with pytest.raises(JobSpecError) as caught:
        parse_job(_job(limits="limits: {max_streams: 0}"))
    assert "limits.max_streams" in str(caught.value)
    assert parse_job(_job(streams=2, concepts=256)).limits.max_streams == 1000  # the defaults let these pass
