"""Tests for deploy/prometheus (alert rules) and deploy/grafana (dashboard): promtool checks and
unit-tests the rules, the dashboard is well formed and its PromQL parses, and a real job serves
every metric either of them names, so the names cannot drift from pipeline/metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.pipeline.test_metrics import running_job, wait_for_scrape

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy/prometheus/alerts.yaml"
ALERT_TESTS = REPO / "deploy/prometheus/alerts.test.yaml"
DASHBOARD = REPO / "deploy/grafana/sam3-stream.json"
METRIC_NAME = re.compile(r"\bsam3_[a-z0-9_]+")
SERIES_LABEL = re.compile(r'(\w+)="([^"]*)"')
SUBJECT_LABELS = ("stream", "engine", "sink")  # what tells one alert's series from another's
# Only engines on a CUDA device have GPU memory to report (pipeline/metrics.py); the job here runs on CPU.
CUDA_ONLY = {"sam3_engine_gpu_memory_bytes"}
# What Grafana fills in before a query runs.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$stream": ".*"}


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `apt-get install prometheus` (Debian/Ubuntu) or take it from a "
                    "Prometheus release archive")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return [p for p in out if p["type"] != "row"]


def _dashboard_queries(dashboard: dict) -> list[str]:
    queries = [target["expr"] for panel in _panels(dashboard) for target in panel["targets"]]
    queries += [var["query"]["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return queries


def test_alert_rules_pass_promtool_check():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_unit_tests_pass_promtool():
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_for_severity_and_annotations_naming_its_stream_or_engine():
    rules = _rules()
    assert len(rules) >= 8
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no for:"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        subject = "engine" if "engine" in name.lower() else "stream"
        for key in ("summary", "description"):
            assert f"$labels.{subject}" in rule["annotations"][key], f"{name}: {key} does not name the {subject}"
            assert "$labels.job" in rule["annotations"][key], f"{name}: {key} does not name the job"


def _subject(labels: dict) -> tuple:
    return tuple(labels.get(key) for key in SUBJECT_LABELS)


def test_every_alert_has_unit_tests_that_fire_it_and_series_that_must_not():
    fired, spared = set(), set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        subjects = {_subject(dict(SERIES_LABEL.findall(s["series"]))) for s in case["input_series"]}
        for check in case.get("alert_rule_test", []):
            firing = {_subject(alert["exp_labels"]) for alert in check["exp_alerts"]}
            if firing:
                fired.add(check["alertname"])
            if subjects - firing:  # series in the input that this alert must leave alone
                spared.add(check["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names - fired == set(), "alerts no unit test fires"
    assert names - spared == set(), "alerts with no input series that must not fire them"


def test_dashboard_is_grafana_json_whose_panels_all_query_prometheus():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "stream"):
        assert variables[name]["query"]["query"].startswith("label_values("), name
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert all(METRIC_NAME.search(t["expr"]) for t in panel["targets"]), panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every query (Grafana's variables filled in) as a recording rule's expression."""
    queries = _dashboard_queries(_dashboard())
    rules = []
    for i, query in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        query = re.sub(r"^label_values\((.+), \w+\)$", r"\1", query)  # the selector inside label_values()
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _used_names() -> dict[str, set[str]]:
    """Metric names (as exposed: _total, _bucket, ...) by where they are used."""
    used: dict[str, set[str]] = {}
    for rule in _rules():
        for name in METRIC_NAME.findall(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for query in _dashboard_queries(_dashboard()):
        for name in METRIC_NAME.findall(query):
            used.setdefault(name, set()).add("dashboard")
    return used


def _declared(text: str) -> set[str]:
    """Sample names the exposition declares by its TYPE lines, samples or not."""
    out = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", text, re.MULTILINE):
        out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return out


def test_every_metric_the_dashboard_and_alerts_use_is_served_by_a_real_job(ray_session, tmp_path):
    used = _used_names()
    assert "sam3_engine_step_seconds_bucket" in used and "sam3_sink_errors_total" in used
    with running_job(tmp_path) as job:
        # one stream ended (its final counts stay), the other runs: every family has its samples
        got = wait_for_scrape(job.port, lambda g: g.get(("sam3_stream_state", (("job", "watch"), ("state", "finished"),
                                                                                ("stream", "short")))) == 1
                              and g.get(("sam3_stream_frames_processed_total",
                                         (("job", "watch"), ("stream", "looping")))), "stream short finished")
        text = urllib.request.urlopen(f"http://127.0.0.1:{job.port}/metrics", timeout=5).read().decode()
    served = {name for name, _ in got}
    without_samples = {name: where for name, where in used.items() if name not in served}
    assert set(without_samples) <= CUDA_ONLY, f"used but not served: {without_samples}"
    undeclared = {name: where for name, where in used.items() if name not in _declared(text)}
    assert not undeclared, f"used but not even declared by the job's /metrics: {undeclared}"
