"""The Kafka sink against a real broker that freezes (SIGSTOP) and comes back (SIGCONT): a capped spool,
drops counted past the cap, never a blocked write, and a degraded/recovered pair of health changes."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest

from operators.broker import EmbeddedBroker
from operators.sinks import KafkaSink
from tests.operators.test_sinks import consume, event, returns, track

CAP = 6000  # bytes: a few dozen of the test records


@contextlib.contextmanager
def frozen(broker: EmbeddedBroker):
    """The broker process stopped (it holds its connections but answers nothing) until the block ends."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


@pytest.fixture
def broker():
    with EmbeddedBroker() as b:
        yield b


def _record_bytes(record) -> int:
    return len(record.stream_id.encode()) + len(record.to_json())


def test_a_frozen_broker_fills_a_capped_spool_then_drops_and_counts(broker):
    sink = KafkaSink(broker.bootstrap_servers, "tracks-frozen", "events-frozen", linger_ms=0,
                     client={"buffer_memory": CAP, "max_block_ms": 1000})
    first = [track("cam1", f) for f in range(5)]
    sink.write_tracks(first)
    sink.write_events([event("cam1", 0)])  # both topics' metadata known, as after a stream's start
    sink.flush()
    assert sink.sent == 6 and not sink.degraded and sink.take_health_changes() == []

    records = [track("cam1", f) for f in range(5, 205)]
    with frozen(broker):
        for record in records:
            returns(lambda r=record: sink.write_tracks([r]))  # never waits for the frozen broker
        assert 0 < sink.dropped < len(records)
        assert sink.spool_peak_bytes <= CAP < sum(map(_record_bytes, records))  # memory stays bounded
        assert sink.spooled_bytes + _record_bytes(records[-1]) > CAP  # it is full: that is why it drops
        [change] = sink.take_health_changes()
        assert change.degraded and "spool full" in change.reason and change.dropped >= 1
        # the sink's own event goes past the full spool: Kafka gets it once it is back
        degraded_event = change.event(_Events(), frame_index=7, pts_s=1.4, ts=records[0].ingest_ts)
        sink.write_events([degraded_event])
        sink.flush(0.5, spooled_ok=True)  # a resume point does not wait for the frozen broker
    spooled = len(records) - sink.dropped
    returns(sink.flush)  # back: everything in the spool is delivered, and drops are no error
    assert sink.sent == 6 + spooled + 1 and sink.errors == 0 and sink.spooled_bytes == 0
    [change] = sink.take_health_changes()
    assert not change.degraded and change.dropped == sink.dropped
    assert not sink.degraded
    sink.close()
    delivered = [json.loads(m.value)["frame_index"] for m in consume(broker.bootstrap_servers, "tracks-frozen",
                                                                        5 + spooled)]
    assert sorted(delivered) == list(range(5 + spooled))  # the spool kept the oldest, in order; later ones dropped
    events = consume(broker.bootstrap_servers, "events-frozen", 2)
    assert sorted(json.loads(m.value)["type"] for m in events) == ["sink_degraded", "track_start"]


def test_a_short_freeze_within_the_spool_loses_nothing(broker):
    sink = KafkaSink(broker.bootstrap_servers, "tracks-short", "events-short", linger_ms=0)
    sink.write_tracks([track("cam1", 0)])
    sink.write_events([event("cam1", 0)])
    sink.flush()
    with frozen(broker):
        for f in range(1, 50):
            returns(lambda f=f: sink.write_tracks([track("cam1", f)]))
        sink.write_events([event("cam1", 1)])
        sink.flush(0.5, spooled_ok=True)
        assert sink.dropped == 0 and not sink.degraded and sink.spooled_bytes > 0
    returns(sink.close)
    assert sink.sent == 52 and sink.errors == sink.dropped == 0 and sink.take_health_changes() == []
    assert len(consume(broker.bootstrap_servers, "tracks-short", 50)) == 50


class _Events:
    """The stream events the degraded change becomes (the stream actor passes its StreamTracks)."""

    def __getattr__(self, name):
        from operators.stream_events import StreamEvents

        return getattr(StreamEvents("job", "cam1"), name)
