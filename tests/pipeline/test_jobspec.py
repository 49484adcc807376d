from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.jobspec import (
    ConceptRule,
    JobSpec,
    JobSpecError,
    KafkaSinkSpec,
    StreamSpec,
    find_watchlist,
    load_job,
    parse_job,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))

# The example of DESIGN.md, "Job file (YAML) — the keys that must keep working".
DESIGN_EXAMPLE = """\
name: lobby
model:
  checkpoint: facebook/sam3      # hub repo id | local dir | .pt/.safetensors file
  device: auto                   # auto | cpu | cuda | cuda:N
  dtype: auto                    # auto | float32 | bfloat16 | float16
engine:
  replicas: 1                    # engine actors; one per GPU
  max_batch: 8
  max_wait_ms: 15
watchlists:
  safety:
    - concept: forklift
      threshold: 0.5
    - concept: person without a helmet
streams:
  - id: cam1
    source: rtsp://10.0.0.5/stream1
    fps: 5                       # sampling rate; omitted = every frame
    watchlist: safety
  - id: archive
    source: /data/videos/**/*.mp4
    watchlist: safety
sinks:
  parquet:
    path: out/
  kafka:
    bootstrap_servers: embedded  # a bundled local Kafka-compatible broker; or host:port[,host:port]
    topic: sam3.tracks
    events_topic: sam3.events
metrics:
  port: 9464
"""

BASE = """\
name: t
watchlists:
  safety:
    - concept: forklift
streams:
  - id: cam1
    source: rtsp://cam/stream
    watchlist: safety
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence - 1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, **kwargs) -> tuple[JobSpecError, Path]:
    job = write(tmp_path / "job.yaml", text)
    with pytest.raises(JobSpecError) as info:
        load_job(job, env=kwargs.pop("env", {}), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value, job


def assert_located(error: JobSpecError, job: Path, line: int, field: str, *fragments: str) -> None:
    assert str(error).startswith(f"{job}:{line}: {field}: "), str(error)
    assert (error.line, error.file) == (line, str(job))
    for fragment in fragments:
        assert fragment in str(error), (fragment, str(error))


# --- valid jobs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_examples_load(path: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # paths resolve against the job file, not the working directory
    job = load_job(path, env={})
    assert (job.streams or job.index is not None) and job.job_file == path.resolve()
    for stream in job.streams:
        assert job.rules_for(stream), stream.id
        assert isinstance(stream.live, bool) and stream.max_in_flight >= 1


def test_examples_cover_what_was_asked():
    assert {p.name for p in EXAMPLES} >= {"demo.yaml", "lobby.yaml", "archive.yaml"}
    demo = load_job(REPO / "configs/examples/demo.yaml", env={})
    assert demo.model.checkpoint == str(REPO / "checkpoints/sam3-tiny")
    assert demo.sinks.kafka is not None and demo.sinks.kafka.embedded
    assert demo.sinks.parquet is not None and demo.sinks.parquet.path == REPO / "out/demo"
    assert demo.metrics.port == 9464
    assert [s.source for s in demo.streams] == [str(REPO / f"configs/examples/media/demo_{x}.mp4") for x in "ab"]
    assert demo.concepts() == ["red square", "green disc"]
    assert load_job(REPO / "configs/examples/demo.yaml", env={"SAM3_METRICS_PORT": "9500"}).metrics.port == 9500
    archive = load_job(REPO / "configs/examples/archive.yaml", env={"ARCHIVE_ROOT": "/mnt/v"})
    assert archive.index.sources == ["/mnt/v/depot/", "/mnt/v/yard/**/*.mp4"] and not archive.streams
    assert {r.concept for r in archive.watchlists["vehicles"]} >= {"car", "red truck"}


def test_design_example_loads(tmp_path):
    job = parse_job(DESIGN_EXAMPLE, filename="lobby.yaml", base_dir=tmp_path, env={})
    assert job.name == "lobby"
    assert (job.model.checkpoint, job.model.device, job.model.dtype) == ("facebook/sam3", "auto", "auto")
    assert (job.engine.replicas, job.engine.max_batch, job.engine.max_wait_ms) == (1, 8, 15.0)
    assert [(r.concept, r.threshold) for r in job.watchlists["safety"]] == [
        ("forklift", 0.5), ("person without a helmet", 0.5)]
    cam, archive = job.streams
    assert (cam.source, cam.source_kind, cam.live, cam.fps) == ("rtsp://10.0.0.5/stream1", "rtsp", True, 5.0)
    assert (archive.source, archive.source_kind, archive.live, archive.fps) == ("/data/videos/**/*.mp4", "glob", False, None)
    assert job.sinks.parquet.path == tmp_path.resolve() / "out"
    kafka = job.sinks.kafka
    assert (kafka.bootstrap_servers, kafka.topic, kafka.events_topic) == ("embedded", "sam3.tracks", "sam3.events")
    assert job.metrics.port == 9464


def test_defaults_and_derived_values(tmp_path):
    text = BASE + """\
  - id: hls
    source: https://cdn.example.com/live/index.m3u8
    watchlist: safety
    max_in_flight: 2
  - id: clip
    source: clips/a.mp4
    watchlist: safety
    loop: true
    live: true
"""
    job = parse_job(text, base_dir=tmp_path, env={})
    cam, hls, clip = job.streams
    assert (cam.live, cam.max_in_flight, cam.fps, cam.loop) == (True, 4, None, False)
    assert (hls.source_kind, hls.live, hls.max_in_flight) == ("hls", True, 2)
    assert (clip.source, clip.source_kind, clip.live, clip.loop) == (str(tmp_path.resolve() / "clips/a.mp4"), "file", True, True)
    rule = job.watchlists["safety"][0]
    assert (rule.threshold, rule.min_frames, rule.min_seconds, rule.zones) == (0.5, 1, 0.0, None)
    assert (job.engine.hotstart, job.sinks.parquet, job.sinks.kafka, job.metrics.port) == ("tentative", None, None, 9464)
    assert job.name == "t"
    assert parse_job(BASE.replace("name: t\n", ""), filename="my job.yaml", env={}).name == "my-job"
    # an unquoted `off` is YAML's false; it still means hot-start off
    assert parse_job(BASE + "engine: {hotstart: off, evict_after_frames: null}\n", env={}).engine.hotstart == "off"


def test_paths_resolve_against_the_job_file(tmp_path, monkeypatch):
    (tmp_path / "models/local").mkdir(parents=True)
    text = BASE.replace("rtsp://cam/stream", "../media/*.mp4") + """\
model:
  checkpoint: ../models/local
sinks:
  parquet:
    path: results
"""
    job_file = write(tmp_path / "jobs/job.yaml", text)
    monkeypatch.chdir(REPO)
    job = load_job(job_file, env={})
    assert job.model.checkpoint == str(tmp_path / "models/local")
    assert job.streams[0].source == str(tmp_path / "media/*.mp4")
    assert job.sinks.parquet.path == tmp_path / "jobs/results"
    # "org/name" stays a hub id unless such a directory exists next to the job file
    hub = write(tmp_path / "jobs/hub.yaml", text.replace("../models/local", "models/local"))
    assert load_job(hub, env={}).model.checkpoint == "models/local"
    (tmp_path / "jobs/models/local").mkdir(parents=True)
    assert load_job(hub, env={}).model.checkpoint == str(tmp_path / "jobs/models/local")


def test_stream_zones_apply_to_rules_without_their_own(tmp_path):
    text = """\
name: z
watchlists:
  w:
    - concept: car
    - concept: bus
      zones: [[[0, 0], [5, 0], [0, 5]]]
streams:
  - id: s
    source: a.mp4
    watchlist: w
    zones:
      - [[0, 0], [100, 0], [100, 50], [0, 50]]
"""
    job = parse_job(text, base_dir=tmp_path, env={})
    car, bus = job.rules_for("s")
    assert car.zones == [[(0, 0), (100, 0), (100, 50), (0, 50)]]
    assert bus.zones == [[(0, 0), (5, 0), (0, 5)]]
    assert job.watchlists["w"][0].zones is None  # the shared rule is untouched


def test_missing_local_source_warns(tmp_path, caplog):
    job_file = write(tmp_path / "job.yaml", BASE.replace("rtsp://cam/stream", "missing.mp4"))
    with caplog.at_level(logging.WARNING, logger="pipeline.jobspec"):
        load_job(job_file, env={})
    assert f"{job_file}:7: streams[0].source:" in caplog.text and "does not exist" in caplog.text


def test_models_built_in_code_are_validated():
    stream = StreamSpec(id="a", source="rtsp://h/s", watchlist="w")
    with pytest.raises(ValidationError, match=r"streams\[0\]\.watchlist: unknown watchlist 'x'"):
        JobSpec(name="j", watchlists={"w": [ConceptRule(concept="car")]},
                streams=[stream.model_copy(update={"watchlist": "x"})])
    job = JobSpec(name="j", watchlists={"w": [ConceptRule(concept="car")]}, streams=[stream])
    assert job.streams[0].live and job.job_file is None
    with pytest.raises(ValidationError):
        KafkaSinkSpec(topic="a", events_topic="a")


# --- environment variables -----------------------------------------------------------------------

def test_env_interpolation(tmp_path):
    text = BASE.replace("rtsp://cam/stream", "rtsp://${CAM_HOST}:${CAM_PORT:-554}/s") + """\
    fps: ${FPS:-null}
metrics:
  port: ${METRICS_PORT}
sinks:
  kafka:
    client:
      ssl_password: "${KAFKA_PASSWORD:-}"
      client_id: "$${not_a_variable}"
"""
    env = {"CAM_HOST": "10.0.0.9", "METRICS_PORT": "9999", "KAFKA_PASSWORD": "123"}
    job = parse_job(text, base_dir=tmp_path, env=env)
    assert job.streams[0].source == "rtsp://10.0.0.9:554/s"
    assert job.streams[0].fps is None
    assert job.metrics.port == 9999
    assert job.sinks.kafka.client == {"ssl_password": "123", "client_id": "${not_a_variable}"}
    job = parse_job(text, base_dir=tmp_path, env={**env, "CAM_PORT": "8554", "FPS": "2.5", "KAFKA_PASSWORD": ""})
    assert (job.streams[0].source, job.streams[0].fps) == ("rtsp://10.0.0.9:8554/s", 2.5)
    assert job.sinks.kafka.client["ssl_password"] == ""


def test_missing_env_variable(tmp_path):
    text = BASE.replace("rtsp://cam/stream", "rtsp://${CAM_HOST}/s")
    error, job = load_error(tmp_path, text, env={"OTHER": "x"})
    assert_located(error, job, line_of(text, "CAM_HOST"), "streams[0].source",
                   "CAM_HOST is not set", "${CAM_HOST:-default}")


# --- watchlists ----------------------------------------------------------------------------------

WATCHLIST = """\
- concept: car
  threshold: 0.4
- concept: red truck
  min_seconds: 5
"""


def test_watchlist_by_name_is_found_up_to_the_repository_root(tmp_path):
    write(tmp_path / "pyproject.toml", "")
    write(tmp_path / "configs/watchlists/vehicles.yaml", WATCHLIST)
    text = BASE + "  - id: road\n    source: a.mp4\n    watchlist: vehicles\n"
    job = load_job(write(tmp_path / "configs/jobs/deep/job.yaml", text), env={})
    assert [(r.concept, r.threshold, r.min_seconds) for r in job.watchlists["vehicles"]] == [
        ("car", 0.4, 0.0), ("red truck", 0.5, 5.0)]
    assert job.rules_for("cam1")[0].concept == "forklift"  # inline watchlists still work
    found, _ = find_watchlist("vehicles", tmp_path / "configs/jobs")
    assert found == (tmp_path / "configs/watchlists/vehicles.yaml").resolve()


def test_watchlist_references_in_the_watchlists_mapping(tmp_path):
    write(tmp_path / "lists/v.yml", WATCHLIST)
    write(tmp_path / "elsewhere/vehicles.yaml", WATCHLIST.replace("car", "van"))
    text = """\
name: w
watchlists:
  by_path: ../lists/v.yml
  by_name: vehicles
streams:
  - {id: a, source: a.mp4, watchlist: by_path}
  - {id: b, source: b.mp4, watchlist: by_name}
"""
    job = load_job(write(tmp_path / "jobs/job.yaml", text), env={}, watchlist_path=[tmp_path / "elsewhere"])
    assert job.watchlists["by_path"][0].concept == "car"
    assert job.watchlists["by_name"][0].concept == "van"
    env_job = load_job(tmp_path / "jobs/job.yaml", env={"SAM3_WATCHLIST_PATH": str(tmp_path / "elsewhere")})
    assert env_job.watchlists["by_name"][0].concept == "van"


def test_error_inside_a_watchlist_file_points_into_it(tmp_path):
    bad = WATCHLIST.replace("threshold: 0.4", "threshold: 0")
    lst = write(tmp_path / "watchlists/vehicles.yaml", bad)
    text = BASE.replace("watchlist: safety", "watchlist: vehicles")
    error, _ = load_error(tmp_path, text)
    assert error.file.endswith("watchlists/vehicles.yaml") and error.line == line_of(bad, "threshold")
    assert "watchlists.vehicles[0].threshold: must be in (0, 1]" in str(error)
    write(lst, "concepts:\n  - concept: car\n")
    error, _ = load_error(tmp_path, text)
    assert "a watchlist file is a YAML list of rules" in str(error)


def test_unknown_watchlist(tmp_path):
    text = BASE.replace("watchlist: safety", "watchlist: safty")
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "watchlist: safty"), "streams[0].watchlist",
                   "unknown watchlist 'safty'", "did you mean 'safety'?", "defined in the job: safety")


# --- bad jobs: one line naming file, line and field -----------------------------------------------

def test_unknown_key_suggests_the_closest(tmp_path):
    text = BASE + "  - id: cam2\n    source: b.mp4\n    fsp: 5\n    watchlist: safety\n"
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "fsp"), "streams[1].fsp", "unknown key 'fsp'", "did you mean 'fps'?")
    text = BASE + "sink:\n  parquet: {path: out}\n"
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "sink:"), "sink", "did you mean 'sinks'?")


def test_wrong_type_names_the_expected_type(tmp_path):
    text = BASE.replace("    watchlist: safety", "    fps: fast\n    watchlist: safety")
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "fps"), "streams[0].fps", "expected a number", "'fast'")
    text = BASE + "engine:\n  replicas: [1]\n"
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "replicas"), "engine.replicas", "expected an integer")


def test_bad_source_scheme(tmp_path):
    text = BASE + "  - id: cam2\n    source: ftp://host/v.mp4\n    watchlist: safety\n"
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "ftp://"), "streams[1].source",
                   "unsupported scheme 'ftp'", "rtsp://", "http:// or https://", "a glob", "a directory")
    text = BASE.replace("rtsp://cam/stream", "s3://bucket/v.mp4")
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "s3://"), "streams[0].source", "unsupported scheme 's3'")


def test_duplicate_stream_id(tmp_path):
    text = BASE + "  - id: cam1\n    source: b.mp4\n    watchlist: safety\n"
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "id: cam1", 2), "streams[1].id", "duplicate stream id 'cam1'")


def test_threshold_out_of_range(tmp_path):
    for value in ("1.5", "0", "-0.2"):
        text = BASE.replace("- concept: forklift", f"- concept: forklift\n      threshold: {value}")
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, "threshold"), "watchlists.safety[0].threshold", "(0, 1]")


def test_bad_zone_polygon(tmp_path):
    cases = {
        "[[0, 0], [10, 0]]": ("streams[0].zones[0]", "at least 3"),
        "[[0, 0], [10, 0], [20, 0]]": ("streams[0].zones[0]", "encloses no area"),
        "[[0, 0], [10, 0, 1], [5, 5]]": ("streams[0].zones[0][1]", "[x, y]"),
    }
    for zone, (field, fragment) in cases.items():
        text = BASE.replace("watchlist: safety", f"watchlist: safety\n    zones:\n      - {zone}")
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, "- [["), field, fragment)


def test_invalid_yaml_reports_the_parser_line(tmp_path):
    text = BASE + "sinks:\n  parquet:\n path: out\n"
    error, job = load_error(tmp_path, text)
    assert str(error).startswith(f"{job}:{line_of(text, ' path: out')}: invalid YAML:")
    error, job = load_error(tmp_path, "name: t\n\tstreams: []\n")
    assert str(error).startswith(f"{job}:2: invalid YAML:") and "tabs" in str(error)


def test_other_file_level_problems(tmp_path):
    with pytest.raises(JobSpecError, match=r"nope\.yaml: file not found"):
        load_job(tmp_path / "nope.yaml", env={})
    error, job = load_error(tmp_path, "")
    assert str(error) == f"{job}: the job file is empty (start from configs/examples/demo.yaml)"
    error, job = load_error(tmp_path, "- a\n")
    assert str(error).startswith(f"{job}:1: a job file is a mapping")


def test_more_field_checks(tmp_path):
    cases = [
        (BASE.replace("    watchlist: safety", "    watchlist: safety\n    watchlist: x"), "watchlist: x",
         "streams[0].watchlist", "duplicate key 'watchlist'"),
        (BASE.replace("    source: rtsp://cam/stream\n", ""), "- id: cam1", "streams[0].source", "required key missing"),
        (BASE.replace("watchlist: safety", "watchlist: safety\n    loop: true"), "loop", "streams[0].loop", "can loop"),
        (BASE + "model:\n  device: gpu\n", "device", "model.device", "cuda:N"),
        (BASE + "sinks:\n  kafka:\n    bootstrap_servers: localhost\n", "bootstrap_servers",
         "sinks.kafka.bootstrap_servers", "host:port"),
        (BASE + "sinks:\n  kafka:\n    client:\n      acks: 1\n", "acks", "sinks.kafka.client.acks", "set by the pipeline"),
        (BASE + "sinks:\n  kafka:\n    client:\n      security_protocl: SSL\n", "security_protocl",
         "sinks.kafka.client.security_protocl", "did you mean 'security_protocol'?"),
        (BASE.replace("- concept: forklift", "- concept: forklift\n    - concept: Forklift"), "Forklift",
         "watchlists.safety[1].concept", "one rule per concept"),
        (BASE.replace("id: cam1", "id: cam 1"), "id: cam 1", "streams[0].id", "letters, digits"),
    ]
    for text, needle, field, fragment in cases:
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, needle), field, fragment)


KAFKA_CLIENT = BASE + "sinks:\n  kafka:\n    client:\n"


def test_kafka_tls_and_sasl_settings(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = KAFKA_CLIENT + """\
      security_protocol: SASL_SSL
      sasl_mechanism: SCRAM-SHA-512
      sasl_plain_username: sam3
      sasl_plain_password: ${KAFKA_PASSWORD}
      ssl_cafile: certs/ca.pem
"""
    job = parse_job(text, base_dir=tmp_path, env={"KAFKA_PASSWORD": "s3cret"})
    client = job.sinks.kafka.client
    assert client["sasl_plain_password"] == "s3cret"
    assert client["ssl_cafile"] == str(tmp_path / "certs" / "ca.pem")  # resolved against the job file, not the cwd
    cases = [
        ("      security_protocol: SASL_SSLL\n", "SASL_SSLL", "security_protocol", "did you mean 'SASL_SSL'?"),
        ("      security_protocol: SASL_SSL\n", "client:", "sasl_mechanism", "needs a sasl_mechanism"),  # missing
        ("      security_protocol: SASL_SSL\n      sasl_mechanism: SCRAM\n", "SCRAM", "sasl_mechanism",
         "unknown SASL mechanism"),
        ("      security_protocol: SASL_PLAINTEXT\n      sasl_mechanism: PLAIN\n      sasl_plain_username: u\n"
         "      sasl_plain_password: ''\n", "sasl_plain_password", "sasl_plain_password", "${KAFKA_PASSWORD}"),
        ("      sasl_mechanism: PLAIN\n", "client:", "security_protocol", "use SASL_SSL"),  # missing
        ("      security_protocol: SSL\n      ssl_cafile: certs/missing.pem\n", "ssl_cafile", "ssl_cafile",
         "is not a file"),
    ]
    for settings, needle, key, fragment in cases:
        text = KAFKA_CLIENT + settings
        error, job_file = load_error(tmp_path, text)
        assert_located(error, job_file, line_of(text, needle), f"sinks.kafka.client.{key}", fragment)


def test_first_problem_in_file_order_and_the_rest_counted(tmp_path):
    text = "engine:\n  max_batch: x\n" + BASE.replace("rtsp://cam/stream", "ftp://x/y")
    error, job = load_error(tmp_path, text)
    assert_located(error, job, 2, "engine.max_batch", "expected an integer")
    assert re.search(r"\[\+1 more problem", str(error))


def test_misspelt_top_level_key_is_named_instead_of_the_missing_one(tmp_path):
    text = BASE.replace("streams:", "strems:")
    error, job = load_error(tmp_path, text)
    assert_located(error, job, line_of(text, "strems:"), "strems", "unknown key 'strems'", "did you mean 'streams'?")
    assert "required key missing" not in str(error) and "more problem" not in str(error), str(error)


# (text added to BASE or a replacement in it, the misspelt key's line, its field path, the key it meant)
MISSPELT_KEYS = [
    (BASE + "metrcs:\n  port: 9000\n", "metrcs:", "metrcs", "metrics"),
    (BASE + "model:\n  devce: cpu\n", "devce", "model.devce", "device"),
    (BASE + "engine:\n  max_bach: 4\n", "max_bach", "engine.max_bach", "max_batch"),
    (BASE + "engine:\n  tracking:\n    max_object: 5\n", "max_object", "engine.tracking.max_object", "max_objects"),
    (BASE + "  - id: cam2\n    sorce: b.mp4\n    watchlist: safety\n", "sorce", "streams[1].sorce", "source"),
    (BASE.replace("- concept: forklift", "- concept: forklift\n    - concpt: ladder"), "concpt",
     "watchlists.safety[1].concpt", "concept"),
    (BASE + "sinks:\n  parquet:\n    pth: out\n", "pth", "sinks.parquet.pth", "path"),
    (BASE + "sinks:\n  kafka:\n    evnts_topic: ev\n", "evnts_topic", "sinks.kafka.evnts_topic", "events_topic"),
    (BASE + "metrics:\n  prot: 9000\n", "prot", "metrics.prot", "port"),
]


@pytest.mark.parametrize(("text", "needle", "field", "meant"), MISSPELT_KEYS, ids=[c[2] for c in MISSPELT_KEYS])
def test_misspelt_key_is_named_first_at_every_level(tmp_path, text, needle, field, meant):
    # an earlier problem on line 1 (a bad job name): the misspelt key still comes first
    text = text.replace("name: t\n", "name: 'bad name'\n", 1)
    error, job = load_error(tmp_path, text)
    key = field.rsplit(".", 1)[-1].split("]")[-1]
    assert_located(error, job, line_of(text, needle), field, f"unknown key '{key}'", f"did you mean '{meant}'?",
                   "[+1 more problem")
    assert "required key missing" not in str(error), str(error)


def test_value_its_yaml_type_cannot_hold(tmp_path):
    for value, fragment in [("!!int x", "'x' is not a valid int"), ("!!float x", "'x' is not a valid float"),
                            ("!!bool x", "'x' is not a valid bool"), ("!!timestamp x", "'x' is not a valid timestamp"),
                            ("2001-13-45", "'2001-13-45' is not a valid timestamp"),
                            ("${NOPE:-2001-13-45}", "'2001-13-45' is not a valid timestamp"),
                            ("!!python/object:os.system x", "could not determine a constructor")]:
        text = BASE.replace("    watchlist: safety", f"    fps: {value}\n    watchlist: safety")
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, "fps:"), "streams[0].fps", "cannot read value: ", fragment)


def test_recursive_aliases_and_alias_bombs(tmp_path):
    cases = [
        (BASE + "engine: &e\n  replicas: 1\n  tracking: *e\n", "tracking: *e", "engine.tracking", "recursive alias"),
        (BASE + "engine: &e\n  replicas: 1\n  <<: *e\n", "<<: *e", "engine", "recursive merge key"),
        (BASE + "engine: &e\n  tracking:\n    <<: [*e]\n", "<<: [*e]", "engine.tracking", "recursive merge key"),
    ]
    for text, needle, field, fragment in cases:
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, needle), field, fragment)
    # each level names the one above ten times: a million values from seven short lines
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]" for prev, name in zip("abcde", "bcdef", strict=True)]
    text = BASE.replace("watchlists:", "x:\n" + "".join(f"  {line}\n" for line in levels) + "watchlists:")
    error, job = load_error(tmp_path, text)
    assert str(error).startswith(f"{job}:") and "values once aliases are expanded" in str(error), str(error)


def test_odd_keys_are_shown_escaped_on_one_line(tmp_path):
    for key, shown in [('"\\r"', r"'\r'"), ('""', "''"), ('" fps"', "' fps'"), ('"a\\u2028b"', r"'a\u2028b'"),
                       ('"x\\ty"', r"'x\ty'"), ("名前", "名前")]:
        text = BASE + f"{key}: 1\n"
        error, job = load_error(tmp_path, text)
        quoted = shown if shown.startswith("'") else f"'{shown}'"
        assert_located(error, job, len(text.splitlines()), shown, f"unknown key {quoted} — ")
        assert str(error).splitlines() == [str(error)]


def test_names_too_long_for_the_file_system(tmp_path):
    long = "x" * 5000  # longer than any file name the OS accepts: looking it up fails with ENAMETOOLONG
    job = parse_job(BASE + f"model:\n  checkpoint: {long}\n", base_dir=tmp_path, env={})
    assert job.model.checkpoint == long  # not a file here: a hub id
    for ref in (long, f"dir/{long}"):
        text = BASE.replace("    watchlist: safety", f"    watchlist: {ref}")
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, long), "streams[0].watchlist", "unknown watchlist", "defined in the job: safety")


def test_zone_point_beyond_any_float(tmp_path):
    for huge in (10**400, "1e400", ".inf", ".nan"):
        text = BASE.replace("watchlist: safety", f"watchlist: safety\n    zones:\n      - [[0, 0], [1, 0], [0, {huge}]]")
        error, job = load_error(tmp_path, text)
        assert_located(error, job, line_of(text, "- [["), "streams[0].zones[0][2]", "a zone point is [x, y] in pixels")
