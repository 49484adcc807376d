"""Every engine knob of the job file reaches the streaming engine, and bad values are refused in one line."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine_actor import EngineSettings
from pipeline.jobspec import JobSpecError, load_job, parse_job
from sam3_runtime.config import VideoConfig
from sam3_runtime.video.types import EngineOptions
from tests.pipeline.test_jobspec import BASE

TUNED = BASE + """\
engine:
  max_batch: 3
  max_wait_ms: 7
  hotstart: tentative
  detection_nms: false
  fill_holes: false
  non_overlapping: false
  evict_after_frames: 50
  max_objects_per_stream: 12
  tracking:
    new_object_threshold: 0.6
    association_iou: 0.25
    hotstart_delay: 7
    recondition_every: 0
"""

# job file key -> (VideoConfig field, the value TUNED sets)
TRACKING = {"new_object_threshold": ("new_det_thresh", 0.6), "association_iou": ("assoc_iou_thresh", 0.25),
            "hotstart_delay": ("hotstart_delay", 7), "recondition_every": ("recondition_every_nth_frame", 0),
            "max_objects_per_stream": ("max_num_objects", 12)}


def test_defaults_leave_the_engine_as_it_was():
    job = parse_job(BASE, env={})
    assert job.engine.engine_options() == EngineOptions()
    checkpoint = dataclasses.replace(VideoConfig(), new_det_thresh=0.65, max_num_objects=99)
    assert job.engine.tracking.apply(checkpoint) == checkpoint  # unset keys keep the checkpoint's values
    assert parse_job(BASE + "engine:\n  tracking:\n", env={}).engine.tracking.apply(checkpoint) == checkpoint
    settings = EngineSettings.from_job(job)
    # the one default that differs from the checkpoint: a finite cap on objects per stream, not SAM 3's 10000
    assert settings.video(checkpoint) == dataclasses.replace(checkpoint, max_num_objects=64)
    assert not settings.compile


def test_every_knob_reaches_the_engine_settings():
    job = parse_job(TUNED, env={})
    settings = EngineSettings.from_job(job)
    assert settings.options == EngineOptions(hotstart_mode="tentative", detection_nms=False, fill_holes=False,
                                             non_overlapping=False, evict_after_frames=50)
    assert (settings.checkpoint, settings.device, settings.dtype) == ("facebook/sam3", "auto", "auto")
    assert (settings.max_batch, settings.max_wait_ms) == (3, 7.0)
    video = settings.video(VideoConfig())
    assert {name: getattr(video, name) for name, _ in TRACKING.values()} == dict(TRACKING.values())
    untouched = [f.name for f in dataclasses.fields(VideoConfig) if f.name not in dict(TRACKING.values())]
    assert all(getattr(video, f) == getattr(VideoConfig(), f) for f in untouched)
    # hotstart: off (YAML's false when unquoted) reaches the engine too
    off = parse_job(BASE + "engine: {hotstart: off}\n", env={})
    assert EngineSettings.from_job(off).options.hotstart_mode == "off"


def test_engine_actor_runs_with_the_job_settings(ray_session, tmp_path):
    from pipeline.engine_actor import EngineActor
    from sam3_runtime.model import load_model, write_random_checkpoint

    ray = ray_session
    checkpoint = write_random_checkpoint(tmp_path / "tiny")
    job = parse_job(TUNED + f"model:\n  checkpoint: {checkpoint}\n  device: cpu\n", env={})
    engine = EngineActor.remote(EngineSettings.from_job(job))
    try:
        info = ray.get(engine.ready.remote(), timeout=300)
    finally:
        ray.kill(engine)
    assert info["options"] == dataclasses.asdict(job.engine.engine_options())
    expected = EngineSettings.from_job(job).video(load_model(str(checkpoint), device="cpu").config.video)
    assert info["video"] == dataclasses.asdict(expected)
    assert info["compiled"] is None  # engine.compile is off by default
    assert {info["video"][name] for name, _ in TRACKING.values()} == {v for _, v in TRACKING.values()}


def _error(tmp_path: Path, text: str) -> JobSpecError:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(JobSpecError) as info:
        load_job(path, env={})
    return info.value


@pytest.mark.parametrize(("engine", "needle", "field", "fragments"), [
    ("engine:\n  fill_holes: maybe\n", "fill_holes", "engine.fill_holes", ["expected a boolean (true or false)"]),
    ("engine:\n  detection_nms: 0.5\n", "detection_nms", "engine.detection_nms", ["expected a boolean"]),
    ("engine:\n  non_overlapping: [1]\n", "non_overlapping", "engine.non_overlapping", ["expected a boolean"]),
    ("engine:\n  evict_after_frames: 0\n", "evict_after_frames", "engine.evict_after_frames", ["at least 1"]),
    ("engine:\n  tracking:\n    new_object_threshold: 1.5\n", "new_object_threshold",
     "engine.tracking.new_object_threshold", ["at most 1", "1.5"]),
    ("engine:\n  tracking:\n    association_iou: 0\n", "association_iou", "engine.tracking.association_iou",
     ["greater than 0"]),
    ("engine:\n  tracking:\n    max_objects: 0\n", "max_objects", "engine.tracking.max_objects", ["at least 1"]),
    ("engine:\n  max_objects_per_stream: 0\n", "max_objects_per_stream", "engine.max_objects_per_stream",
     ["at least 1"]),
    ("engine:\n  max_objects_per_stream: 5\n  tracking:\n    max_objects: 9\n", "max_objects:",
     "engine.tracking.max_objects", ["old name of engine.max_objects_per_stream", "remove engine.tracking.max_objects"]),
    ("engine:\n  compile: fast\n", "compile", "engine.compile", ["expected a boolean"]),
    ("engine:\n  tracking:\n    recondition_every: -1\n", "recondition_every", "engine.tracking.recondition_every",
     ["at least 0"]),
    ("engine:\n  tracking:\n    hotstart_delay: 2.5\n", "hotstart_delay", "engine.tracking.hotstart_delay",
     ["whole number"]),
    ("engine:\n  hotstart: off\n  tracking:\n    hotstart_delay: 5\n", "hotstart_delay",
     "engine.tracking.hotstart_delay", ["no effect with engine.hotstart: off", "set engine.hotstart: tentative"]),
    ("engine:\n  tracking:\n    association: 0.2\n", "association", "engine.tracking.association",
     ["unknown key 'association'", "did you mean 'association_iou'?"]),
    ("engine:\n  fill_hole: false\n", "fill_hole", "engine.fill_hole", ["did you mean 'fill_holes'?"]),
    ("engine:\n  hotstart: later\n", "hotstart", "engine.hotstart", ["'tentative'", "'off'"]),
])
def test_bad_engine_knobs_name_the_field_and_the_fix(tmp_path, engine, needle, field, fragments):
    text = BASE + engine
    error = _error(tmp_path, text)
    line = next(i + 1 for i, row in enumerate(text.splitlines()) if needle in row)
    assert str(error).startswith(f"{tmp_path / 'job.yaml'}:{line}: {field}: "), str(error)
    for fragment in fragments:
        assert fragment in error.problem, (fragment, str(error))


def test_the_old_object_cap_key_still_works_and_says_its_new_name(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.jobspec.engine"):
        job = parse_job(BASE + "engine:\n  tracking:\n    max_objects: 9\n", env={})
    assert "engine.tracking.max_objects is deprecated: rename it to engine.max_objects_per_stream" in caplog.text
    assert EngineSettings.from_job(job).video(VideoConfig()).max_num_objects == 9
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.jobspec.engine"):
        parse_job(BASE + "engine:\n  max_objects_per_stream: 9\n", env={})
    assert "deprecated" not in caplog.text


def _dropped_in_process(checkpoint, frames, cap: int) -> tuple[int, int]:
    """Detections dropped at ``cap`` by a plain engine over ``frames``: in a first session, and in a second one."""
    from sam3_runtime.model import load_model
    from sam3_runtime.video.engine import StreamingEngine

    loaded = load_model(str(checkpoint), device="cpu")
    # eviction off: the random model's objects vanish on the next frame, and with eviction on a vanished
    # object gives way to a new detection instead of the detection being dropped
    engine = StreamingEngine(loaded, EngineOptions(evict_after_frames=None),
                             video=dataclasses.replace(loaded.config.video, max_num_objects=cap))
    totals = []
    for _ in range(2):  # the stream re-opens its session (as after its own restart) between the two runs
        engine.open_session("cam", ["red square"], detection_threshold=0.05)
        for frame in frames:
            engine.step({"cam": frame})
        totals.append(engine.session("cam").dropped.total)
        engine.close_session("cam")
    return totals[0], totals[1]


def test_dropped_detections_reach_the_metrics_endpoint_per_stream(ray_session, tmp_path):
    from pipeline.engine_actor import EngineActor
    from pipeline.metrics import JobMetrics
    from sam3_runtime.model import write_random_checkpoint
    from tests.net import scrape_served

    ray = ray_session
    checkpoint = write_random_checkpoint(tmp_path / "tiny")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    first, second = _dropped_in_process(checkpoint, frames, cap=1)
    assert first > 0 and second > 0, "a random model at threshold 0.05 finds more than one object"
    job = parse_job(BASE + f"model:\n  checkpoint: {checkpoint}\n  device: cpu\n"
                           "engine:\n  max_objects_per_stream: 1\n  evict_after_frames: null\n", env={})
    engine = EngineActor.remote(EngineSettings.from_job(job))
    try:
        for _ in range(2):
            ray.get(engine.open.remote("cam", ["red square"], 0.05), timeout=300)
            ray.get(engine.open.remote("quiet", []), timeout=300)
            for seq, frame in enumerate(frames):
                ray.get([engine.process.remote("cam", seq, frame), engine.process.remote("quiet", seq, frame)],
                        timeout=300)
            stats = ray.get(engine.stats.remote(), timeout=60)
        # the stream's count goes on over its re-opened session; a stream that dropped nothing has no sample
        assert stats.dropped_detections == {"cam": first + second}
    finally:
        ray.kill(engine)
    metrics = JobMetrics("lobby")
    metrics.update({}, {"engine-0": stats})
    got = scrape_served(metrics)
    key = ("sam3_engine_dropped_detections_total", (("engine", "engine-0"), ("job", "lobby"), ("stream", "cam")))
    assert got[key] == first + second
    assert not any(name == "sam3_engine_dropped_detections_total" and ("stream", "quiet") in labels
                   for name, labels in got)


def test_index_command_compile_flag_reaches_the_engine_settings():
    import yaml

    from pipeline.cli import build_parser
    from pipeline.commands.index import job_document

    for flags, want in (([], False), (["--compile"], True)):
        args = build_parser().parse_args(["index", "/videos", "--out", "/data", "--concept", "car", *flags])
        job = parse_job(yaml.safe_dump(job_document(args)), env={})
        assert EngineSettings.from_job(job).compile is want
    assert EngineSettings.from_job(parse_job(BASE + "engine: {compile: true}\n", env={})).compile


def test_engine_compile_reaches_the_actor(ray_session, tmp_path):
    from pipeline.engine_actor import EngineActor
    from sam3_runtime.model import write_random_checkpoint

    ray = ray_session
    checkpoint = write_random_checkpoint(tmp_path / "tiny")
    job = parse_job(BASE + f"model:\n  checkpoint: {checkpoint}\n  device: cpu\nengine:\n  compile: true\n", env={})
    engine = EngineActor.remote(EngineSettings.from_job(job))
    try:  # torch.compile compiles on the first step: wrapping the model at start is quick
        info = ray.get(engine.ready.remote(), timeout=300)
    finally:
        ray.kill(engine)
    assert info["compiled"]["backend"] == "inductor" and info["compiled"]["mode"] is None  # CPU: no CUDA graphs
    assert info["compiled"]["backbone_blocks"] > 0
    assert set(info["compiled"]["tracker_methods"]) == {"decode_masks", "memory_attention.finish"}
