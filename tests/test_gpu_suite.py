"""bench/gpu_suite.py end to end on the CPU (``--device cpu --quick``: the tiny model, every section).

It runs as the command a GPU machine would run, in a fresh interpreter that then reports which
modules it loaded: the suite is meant for a bare machine with torch and numpy, so none of the
pipeline's heavier dependencies may come in through its imports.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a bare GPU machine does not have, and the suite must not need
NOT_ON_A_BARE_MACHINE = {"ray", "av", "kafka", "confluent_kafka", "aiokafka", "pyarrow", "duckdb", "boto3"}
RUN_AND_LIST_MODULES = """
import json, runpy, sys
sys.argv = ["bench.gpu_suite", *sys.argv[1:]]
runpy.run_module("bench.gpu_suite", run_name="__main__")
print("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES, "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.rsplit("MODULES ", 1)[1])
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text(), set(modules)


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.mark.slow
def test_every_section_reports_positive_measurements(suite):
    result, _, _ = suite
    assert result["meta"]["device"] == "cpu" and result["meta"]["model"] == "tiny"
    for section in ("matmul", "backbone", "tracker", "engine", "prompts", "transformers"):
        assert "error" not in result[section], (section, result[section].get("error"))
        assert "skipped" not in result[section], (section, result[section].get("skipped"))
        assert result[section]["rows"], section
    whats = {section: [r["what"] for r in result[section]["rows"]] for section in result if section not in ("meta", "notes")}
    assert whats["backbone"] == ["ViT eager, batch 1", "ViT eager, batch 8", "ViT compiled, batch 1", "ViT compiled, batch 8"]
    assert [w for w in whats["tracker"] if w.startswith("per extra object")] == [
        "per extra object, 7 memory frames", "per extra object, 10 memory frames"]
    assert len(whats["engine"]) == 2 and "per extra text prompt" in whats["prompts"]
    for section in ("matmul", "backbone", "tracker", "engine", "prompts", "transformers"):
        for row in result[section]["rows"]:
            for key, value in _numbers(row).items():
                assert math.isfinite(value), (section, row["what"], key)
                # differences of medians (costs per extra object / prompt) may dip below 0 on a busy CPU
                if not key.endswith(("per_object", "per_prompt")):
                    assert value > 0, (section, row["what"], key, value)
    for row in result["engine"]["rows"]:
        assert row["gpu_busy_pct"] is None  # measured on a GPU only
        assert row["host_reads_per_step"] >= 1 and row["objects_out_per_step"] > 0
    assert result["backbone"]["flops_per_frame"] > 0


@pytest.mark.slow
def test_markdown_table_has_a_row_per_measurement(suite):
    result, md, _ = suite
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[:2] == ["| section | measurement | result |", "| --- | --- | --- |"]
    rows = sum(len(result[s]["rows"]) for s in ("matmul", "backbone", "tracker", "engine", "prompts", "transformers"))
    assert len(table) == 2 + rows
    assert any(line.startswith("| engine | 1 x ") and "fps" in line and "host reads per step" in line for line in table)
    assert any(line.startswith("| backbone | ViT compiled, batch 8 |") and "pct of ceiling" in line for line in table)


@pytest.mark.slow
def test_needs_no_pipeline_dependencies(suite):
    *_, modules = suite
    assert "torch" in modules and "sam3_runtime" in modules
    assert modules & NOT_ON_A_BARE_MACHINE == set()


def test_a_missing_wheel_is_one_line_naming_it_and_the_rest_still_measured(tmp_path):
    blocked = "import sys; sys.modules['tokenizers'] = None\n"  # as on a machine without the wheel
    proc = subprocess.run([sys.executable, "-c", blocked + RUN_AND_LIST_MODULES, "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one log line (the printed table repeats it as a note below the table)
    named = [line for line in proc.stderr.splitlines() if "pip install" in line and not line.startswith("- ")]
    assert len(named) == 1 and "tokenizers" in named[0], proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert result["matmul"]["bf16_tflops"] > 0 and "backbone" not in result
    assert any("pip install tokenizers" in note for note in result["notes"])
    assert "pip install tokenizers" in (tmp_path / "gpu_suite.md").read_text()
