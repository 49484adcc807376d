"""Live watchlist changes: command parsing and diffing, then a running job changed through its
control topic and, in a separate process, through its edited job file and SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from operators.broker import EmbeddedBroker
from operators.records import Event
from operators.synthetic import write_synthetic_video
from operators.watchlist_changes import CommandError, ControlCommand, diff_rules, parse_command, plan_changes
from operators.watchlist_rules import WatchRule
from pipeline.control import JOB_STREAM_ID, plan_reload, stream_rules
from pipeline.jobspec import parse_job
from sam3_runtime.model import write_random_checkpoint
from tests.background_job import HANG_GUARD_S, BackgroundJob, wait_for

# -- commands, diffs and reload plans (no Ray) ----------------------------------------------------


def _cmd(**fields) -> bytes:
    return json.dumps({"version": 1, "stream_id": "cam", **fields}).encode()


RULES = {"person": WatchRule("person", 0.5), "dog": WatchRule("dog", 0.3)}


@pytest.mark.parametrize(("value", "problem"), [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "a command is a JSON object"),
    (_cmd(command="rename_concept", concept="dog"), "unknown command 'rename_concept'"),
    (_cmd(command="set_threshold", concept="dog", threshold=1.5), "threshold must be a number in (0, 1]"),
    (_cmd(command="set_threshold", concept="dog", threshold=True), "threshold must be a number in (0, 1]"),
    (_cmd(command="set_threshold", concept="dog"), "set_threshold needs a threshold"),
    (_cmd(command="add_concept", concept="  "), "needs a concept"),
    (_cmd(command="add_concept", concept="cat", thresold=0.4), "unexpected field(s) thresold"),
    (_cmd(command="add_concept", concept="cat", zones=[[[0, 0], [1, 1]]]), "zone 0 must be a polygon"),
    (_cmd(command="set_rule", concept="cat"), "set_rule needs at least one of"),
    (_cmd(command="set_watchlist", rules=[{"concept": "a"}, {"concept": "a "}]), "appears twice"),
    (json.dumps({"version": 2, "command": "add_concept", "stream_id": "cam", "concept": "x"}).encode(),
     "unsupported version 2"),
    (json.dumps({"command": "add_concept", "concept": "x"}).encode(), "no stream_id"),
])
def test_bad_commands_name_their_problem(value, problem):
    with pytest.raises(CommandError) as caught:
        parse_command(value)
    assert problem in str(caught.value)


def test_a_command_is_read_keyed_by_its_stream():
    command = parse_command(_cmd(command="add_concept", concept=" fork   lift ", threshold=0.6), b"cam")
    assert command == ControlCommand("add_concept", "cam", "fork lift", {"threshold": 0.6})
    assert parse_command(json.dumps({"command": "remove_concept", "concept": "dog"}), b"cam").stream_id == "cam"
    with pytest.raises(CommandError, match="differs from stream_id") as caught:
        parse_command(_cmd(command="remove_concept", concept="dog"), b"other")
    assert caught.value.stream_id == "cam"


def test_plans_against_the_rules_the_stream_has():
    def plan(**fields):
        return plan_changes(RULES, parse_command(_cmd(**fields)))

    (add,) = plan(command="add_concept", concept="cat", threshold=0.4, min_frames=2)
    assert (add.kind, add.old, add.new) == ("add", None, WatchRule("cat", 0.4, 2))
    (update,) = plan(command="set_threshold", concept="dog", threshold=0.6)
    assert (update.kind, update.old, update.new) == ("update", RULES["dog"], WatchRule("dog", 0.6))
    assert plan(command="set_threshold", concept="dog", threshold=0.3) == []  # already so: nothing to do
    (update,) = plan(command="set_rule", concept="person", min_seconds=1.5, zones=[[[0, 0], [9, 0], [9, 9]]])
    assert update.new == WatchRule("person", 0.5, 1, 1.5, (((0, 0), (9, 0), (9, 9)),))
    (remove,) = plan(command="remove_concept", concept="dog")
    assert (remove.kind, remove.old, remove.new) == ("remove", RULES["dog"], None)
    for fields, problem in [(dict(command="add_concept", concept="dog"), "already watches 'dog'"),
                            (dict(command="remove_concept", concept="cat"), "does not watch 'cat'"),
                            (dict(command="set_threshold", concept="cat", threshold=0.2), "does not watch 'cat'")]:
        with pytest.raises(CommandError, match=problem):
            plan(**fields)
    with pytest.raises(CommandError, match="last concept"):
        plan_changes({"dog": RULES["dog"]}, parse_command(_cmd(command="remove_concept", concept="dog")))


def test_diff_rules_removes_then_updates_then_adds():
    new = [WatchRule("cat"), WatchRule("dog", 0.9), WatchRule("bird")]
    assert [(c.kind, c.concept) for c in diff_rules(RULES.values(), new)] == [
        ("remove", "person"), ("update", "dog"), ("add", "cat"), ("add", "bird")]
    assert diff_rules(RULES.values(), RULES.values()) == []
    command = parse_command(_cmd(command="set_watchlist", rules=[{"concept": "dog", "threshold": 0.9}]))
    assert [(c.kind, c.concept) for c in plan_changes(RULES, command)] == [("remove", "person"), ("update", "dog")]


def test_watchlist_change_event_ids_cover_the_change():
    def changed(frame, change):
        return Event("watchlist_changed", "job", "cam", ts=None, frame_index=frame, details={"change": change})

    a, b = {"kind": "add", "concept": "cat"}, {"kind": "add", "concept": "dog"}
    assert changed(5, a).event_id == changed(5, dict(a)).event_id
    assert len({changed(5, a).event_id, changed(5, b).event_id, changed(6, a).event_id}) == 3


JOB_TEXT = """
name: reload
model: {checkpoint: /nowhere/tiny, device: cpu}
watchlists:
  shapes: [{concept: red square, threshold: 0.1}, {concept: green disc, threshold: 0.1}]
  people: [{concept: person}]
streams:
  - {id: a, source: /v/a.mp4, watchlist: shapes}
  - {id: b, source: /v/b.mp4, watchlist: people}
sinks: {kafka: {bootstrap_servers: "localhost:9092", control_topic: ctl}}
"""


def _edited(old: str, new: str):
    assert old in JOB_TEXT
    return parse_job(JOB_TEXT.replace(old, new))


def test_reload_plan_sends_only_the_changed_streams_their_new_rules():
    job = parse_job(JOB_TEXT)
    assert job.sinks.kafka.control_topic == "ctl"
    plan = plan_reload(job, _edited("{concept: person}", "{concept: person, threshold: 0.8}"))
    assert plan.rules == {"b": (WatchRule("person", 0.8),)} and plan.refused == []
    # a stream moved to another watchlist, and stream zones that its rules take
    plan = plan_reload(job, _edited("watchlist: people}", "watchlist: shapes, zones: [[[0, 0], [5, 0], [5, 5]]]}"))
    zone = (((0, 0), (5, 0), (5, 5)),)
    assert plan.rules == {"b": (WatchRule("red square", 0.1, zones=zone), WatchRule("green disc", 0.1, zones=zone))}
    assert plan_reload(job, parse_job(JOB_TEXT)) == plan_reload(job, job)
    assert plan_reload(job, job).rules == {}
    # the rules already applied are the baseline, not the first file's
    current = stream_rules(job) | {"b": (WatchRule("person", 0.8),)}
    assert plan_reload(job, _edited("{concept: person}", "{concept: person, threshold: 0.8}"), current).rules == {}


def test_reload_plan_refuses_what_needs_a_restart():
    job = parse_job(JOB_TEXT)
    plan = plan_reload(job, _edited("device: cpu", "device: cuda"))
    assert plan.rules == {} and plan.refused == ["model changed"]
    plan = plan_reload(job, _edited("  - {id: b, source: /v/b.mp4, watchlist: people}\n",
                                    "  - {id: c, source: /v/b.mp4, watchlist: people}\n"))
    assert plan.refused == ["streams added (c)", "streams removed (b)"]
    plan = plan_reload(job, _edited("/v/a.mp4, watchlist: shapes", "/v/a2.mp4, watchlist: people"))
    assert plan.refused == ["streams changed other than their watchlist (a)"]
    assert plan.rules == {"a": (WatchRule("person"),)}  # the watchlist part still applies
    assert plan_reload(job, _edited("control_topic: ctl", "control_topic: ctl2")).refused == ["sinks changed"]


# -- a running job (real Ray, the embedded broker, the tiny random model) ---------------------------

JOB = """
name: {name}
model: {{checkpoint: {checkpoint}, device: cpu}}
engine: {{replicas: 1, max_batch: 1, max_wait_ms: 5, hotstart: "off"}}
watchlists:
  shapes:
    - {{concept: red square, threshold: {threshold}}}
streams:
{streams}
sinks:
  kafka: {{bootstrap_servers: "{kafka}", topic: {name}.tracks, events_topic: {name}.events{control}}}
metrics: {{port: null}}
"""


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_watchlist")
    return {"video": write_synthetic_video(root / "v.mp4", frames=40, size=(160, 120), fps=10),
            "ckpt": write_random_checkpoint(root / "tiny")}


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        yield b


def _write_job(path, media, broker, name, stream_ids, threshold=0.1, control=True):
    streams = "\n".join(f"  - {{id: {sid}, source: '{media['video']}', watchlist: shapes, loop: true}}"
                        for sid in stream_ids)
    path.write_text(JOB.format(name=name, checkpoint=media["ckpt"], streams=streams, kafka=broker.bootstrap_servers,
                               threshold=threshold, control=f", control_topic: {name}.control" if control else ""))
    return path


class Records:
    """Everything the job wrote to its tracks and events topics, read as it arrives."""

    def __init__(self, broker, name):
        from kafka import TopicPartition

        topics = [f"{name}.tracks", f"{name}.events"]
        broker.create_topics(topics)
        self.consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None,
                                      auto_offset_reset="earliest", enable_auto_commit=False)
        self.consumer.assign([TopicPartition(t, 0) for t in topics])
        self.events_topic = topics[1]
        self.tracks: list[dict] = []
        self.events: list[dict] = []

    def read(self) -> None:
        for records in self.consumer.poll(timeout_ms=200).values():
            for m in records:
                (self.events if m.topic == self.events_topic else self.tracks).append(json.loads(m.value))

    def wait_event(self, what: str, **match) -> dict:
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            found = [e for e in self.events if all(_get(e, k) == v for k, v in match.items())]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} event within {HANG_GUARD_S} s; events: {self.events[-10:]}")
            self.read()

    def close(self) -> None:
        self.consumer.close()


def _get(event: dict, key: str):
    """``a__b`` reads event["a"]["b"]."""
    for part in key.split("__"):
        event = event.get(part) if isinstance(event, dict) else None
    return event




def _processed(ray, actor) -> int:
    return ray.get(actor.get_stats.remote()).counters.frames_processed


def test_control_topic_adds_removes_and_rethresholds_concepts_of_one_stream(ray_session, media, broker, tmp_path):
    ray = ray_session
    name, a, b = "live-ctl", "cam-a", "cam-b"
    job = _write_job(tmp_path / "job.yaml", media, broker, name, [a, b])
    records = Records(broker, name)
    running = BackgroundJob(job)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)

    def send(stream_id, value, key=None):
        data = value if isinstance(value, bytes) else json.dumps({"version": 1, "stream_id": stream_id, **value}).encode()
        producer.send(f"{name}.control", key=(key or stream_id).encode(), value=data)
        producer.flush()

    try:
        started = running.start()
        actors = started.engines | started.streams
        engine = actors["engine-0"]
        for sid in (a, b):
            wait_for(lambda sid=sid: _processed(ray, actors[sid]) >= 2, f"frames of {sid}")

        send(a, {"command": "add_concept", "concept": "green disc", "threshold": 0.1})
        added = records.wait_event("add", type="watchlist_changed", stream_id=a, change__kind="add")
        assert added["concept"] == "green disc" and added["source"] == "control_topic"
        assert added["change"]["old"] is None and added["change"]["new"]["threshold"] == 0.1
        assert ray.get(engine.concepts.remote(a)) == ["green disc", "red square"]
        assert ray.get(engine.concepts.remote(b)) == ["red square"]  # the other stream is untouched

        send(a, {"command": "remove_concept", "concept": "red square"})
        removed = records.wait_event("remove", type="watchlist_changed", stream_id=a, change__kind="remove")
        assert removed["change"]["old"]["concept"] == "red square" and removed["change"]["new"] is None
        assert ray.get(engine.concepts.remote(a)) == ["green disc"]
        assert [r["concept"] for r in ray.get(actors[a].watch_rules.remote())] == ["green disc"]

        send(b, {"command": "set_threshold", "concept": "red square", "threshold": 0.9})
        raised = records.wait_event("threshold", type="watchlist_changed", stream_id=b)
        assert (raised["change"]["old"]["threshold"], raised["change"]["new"]["threshold"]) == (0.1, 0.9)
        assert ray.get(actors[b].watch_rules.remote())[0]["threshold"] == 0.9

        # bad commands: each is refused with an event naming its problem, and the job carries on
        send(a, b"{not json")
        send("nowhere", {"command": "add_concept", "concept": "cat"})
        send(b, {"command": "set_threshold", "concept": "red square", "threshold": 1.5})
        send(a, {"command": "remove_concept", "concept": "red square"})
        send(a, {"command": "explode"})
        for stream_id, problem in [(a, "malformed JSON"), (JOB_STREAM_ID, "unknown stream 'nowhere'"),
                                   (b, "threshold must be a number in (0, 1]"), (a, "does not watch 'red square'"),
                                   (a, "unknown command 'explode'")]:
            wait_for(lambda s=stream_id, p=problem: (records.read() or True) and any(
                e["type"] == "watchlist_rejected" and e["stream_id"] == s and p in e["error"]
                for e in records.events), f"rejection {problem!r}")
        counts = {sid: _processed(ray, actors[sid]) for sid in (a, b)}
        for sid in (a, b):
            wait_for(lambda sid=sid: _processed(ray, actors[sid]) >= counts[sid] + 3, f"{sid} going on")
        assert ray.get(engine.concepts.remote(b)) == ["red square"]
    finally:
        running.stop_streams()
        running.join()
        producer.close()
    assert running.result().exit_code == 0
    wait_for(lambda: (records.read() or True) and sum(e["type"] == "stream_end" for e in records.events) == 2,
             "both stream ends")
    records.close()

    # removal: red square tracks of cam-a end with reason concept_removed and publish nothing after
    frame = removed["frame_index"]
    assert all(t["frame_index"] < frame for t in records.tracks if t["stream_id"] == a and t["concept"] == "red square")
    for e in records.events:
        if e["type"] == "track_end" and e["stream_id"] == a and e["concept"] == "red square":
            assert e["reason"] == "concept_removed" and e["decided_frame_index"] == frame
    # threshold: from its frame on, cam-b publishes only what scores 0.9
    assert all(t["score"] >= 0.9 for t in records.tracks if t["stream_id"] == b and t["frame_index"] >= raised["frame_index"])
    # the other stream had no watchlist change but its own, and every id is unique
    assert [e["change"]["kind"] for e in records.events if e["type"] == "watchlist_changed" and e["stream_id"] == b] == ["update"]
    ids = [e["event_id"] for e in records.events]
    assert len(ids) == len(set(ids))


def test_sighup_applies_an_edited_job_file_and_refuses_an_invalid_one(ray_session, media, broker, tmp_path):
    name, sid = "live-hup", "cam-h"
    job = _write_job(tmp_path / "job.yaml", media, broker, name, [sid], control=False)
    original = job.read_text()
    records = Records(broker, name)
    log = (tmp_path / "driver.log").open("w")
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--no-progress"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        records.wait_event("stream start", type="stream_start", stream_id=sid)
        # a threshold changed, a concept added, and an engine setting that needs a restart
        edited = original.replace("- {concept: red square, threshold: 0.1}",
                                  "- {concept: red square, threshold: 0.3}\n    - {concept: green disc}")
        job.write_text(edited.replace("max_wait_ms: 5", "max_wait_ms: 6"))
        driver.send_signal(signal.SIGHUP)
        update = records.wait_event("update", type="watchlist_changed", stream_id=sid, change__kind="update")
        add = records.wait_event("add", type="watchlist_changed", stream_id=sid, change__kind="add")
        assert update["source"] == add["source"] == "sighup" and update["frame_index"] == add["frame_index"]
        assert (update["change"]["old"]["threshold"], update["change"]["new"]["threshold"]) == (0.1, 0.3)
        assert add["concept"] == "green disc" and add["change"]["new"]["threshold"] == 0.5

        job.write_text(edited.replace("threshold: 0.3", "threshold: 2"))  # fails validation: nothing changes
        driver.send_signal(signal.SIGHUP)
        refused = records.wait_event("refused reload", type="watchlist_rejected", stream_id=JOB_STREAM_ID)
        assert refused["source"] == "sighup" and f"{job}:7: watchlists.shapes[0].threshold" in refused["error"]
        driver.send_signal(signal.SIGINT)
        assert driver.wait(HANG_GUARD_S) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    records.wait_event("stream end", type="stream_end", stream_id=sid)
    records.close()
    changes = [e for e in records.events if e["type"] == "watchlist_changed"]
    assert len(changes) == 2  # the refused file changed nothing
    text = (tmp_path / "driver.log").read_text()
    assert "engine changed: a restart is needed for that" in text
    assert "job file reload refused, nothing changed" in text
