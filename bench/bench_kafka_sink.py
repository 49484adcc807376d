"""Throughput of KafkaSink: track observations per second into a Kafka-compatible broker.

    python -m bench.bench_kafka_sink                          # embedded Tansu broker (in-memory)
    python -m bench.bench_kafka_sink --bootstrap kafka:9092   # an existing cluster

Records look like the pipeline's: one observation per (stream, frame, track) with the COCO RLE
of a ``--mask-size`` square mask holding a disc, written ``--tracks`` at a time (one frame's
tracks per ``write_tracks`` call) round-robin over ``--streams`` streams. Time runs from the
first write to the end of the final ``flush()``, so every counted record was acknowledged by the
broker (acks=all, idempotent producer). JSON encoding is part of the measured time, as it is in
the pipeline; its share is reported separately. Target: >= 5,000 records/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
import uuid

import numpy as np
from pycocotools import mask as mask_utils

from operators.broker import EmbeddedBroker, create_topics
from operators.records import TrackObservation
from operators.sinks import KafkaSink

logger = logging.getLogger("bench.kafka_sink")


def disc_rle(size: int, shift: int) -> dict:
    yy, xx = np.mgrid[:size, :size]
    r = size // 3
    disc = ((yy - size / 2) ** 2 + (xx - size / 2 - shift % (size // 4)) ** 2) <= r * r
    rle = mask_utils.encode(np.asfortranarray(disc.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def make_frames(n_records: int, streams: int, tracks: int, mask_size: int) -> list[list[TrackObservation]]:
    masks = [disc_rle(mask_size, k) for k in range(16)]
    t0 = dt.datetime.now(dt.UTC)
    frames = []
    frame_index = 0
    total = 0
    while total < n_records:
        for s in range(streams):
            n = min(tracks, n_records - total)
            if n <= 0:
                break
            frames.append([
                TrackObservation(job="bench", stream_id=f"cam{s:03d}", source=f"rtsp://10.0.0.{s}/stream1",
                                 frame_index=frame_index, pts_s=frame_index / 5, ingest_ts=t0, track_id=k,
                                 concept="person without a helmet", score=0.87, box_xyxy=(12.5, 40.0, 212.0, 480.5),
                                 mask=masks[(frame_index + k) % len(masks)], area_px=3456, model="facebook/sam3")
                for k in range(n)
            ])
            total += n
        frame_index += 1
    return frames


def run(servers: str, topic: str, frames: list[list[TrackObservation]], linger_ms: int, batch_size: int) -> float:
    sink = KafkaSink(servers, topic, topic + ".events", linger_ms=linger_ms, batch_size=batch_size)
    sink.connect()
    n = sum(len(f) for f in frames)
    start = time.perf_counter()
    for frame in frames:
        sink.write_tracks(frame)
    sink.flush()
    elapsed = time.perf_counter() - start
    sink.close()
    if sink.sent != n or sink.errors:
        raise RuntimeError(f"benchmark delivery incomplete: {sink.sent} of {n} acknowledged, {sink.errors} failed")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default="embedded", help="'embedded' or host:port[,host:port]")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tracks", type=int, default=4, help="tracks per frame, i.e. records per write_tracks call")
    p.add_argument("--mask-size", type=int, default=100)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--linger-ms", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256 * 1024)
    p.add_argument("--repeats", type=int, default=3, help="timed runs (each to a fresh topic); the best is reported")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("kafka", "operators.broker", "operators.sinks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    frames = make_frames(args.records, args.streams, args.tracks, args.mask_size)
    n = sum(len(f) for f in frames)
    start = time.perf_counter()
    sizes = [len(r.to_json()) for f in frames for r in f]
    encode_s = time.perf_counter() - start

    broker = EmbeddedBroker() if args.bootstrap == "embedded" else None
    servers = broker.bootstrap_servers if broker is not None else args.bootstrap
    try:
        times = []
        for _ in range(1 + args.repeats):  # the first run warms up connections and code paths
            topic = f"bench.tracks.{uuid.uuid4().hex[:8]}"
            create_topics(servers, [topic], partitions=args.partitions)
            times.append(run(servers, topic, frames, args.linger_ms, args.batch_size))
    finally:
        if broker is not None:
            broker.close()

    best = min(times[1:])
    logger.info("broker %s, %d records (%d streams, %d per write), mask %dx%d, %d partitions, linger %d ms, "
                "batch %d B", "embedded Tansu (memory)" if broker is not None else servers, n, args.streams,
                args.tracks, args.mask_size, args.mask_size, args.partitions, args.linger_ms, args.batch_size)
    logger.info("message value: mean %.0f B, max %d B; JSON encoding alone: %.0f records/s", np.mean(sizes),
                max(sizes), n / encode_s)
    logger.info("timed runs (s): %s", ", ".join(f"{t:.2f}" for t in times[1:]))
    logger.info("KafkaSink throughput: %.0f records/s (%.1f MB/s of values), best of %d", n / best,
                sum(sizes) / best / 1e6, args.repeats)


if __name__ == "__main__":
    main()
