"""A small archive index dataset for tests: real videos, and rows written with the index schemas.

Two files indexed ``done`` (``a`` re-indexed once, so its first pass left a *stale* part behind),
one whose latest pass ``failed`` (its earlier, done pass's rows are still on disk). Every track
has per-frame rows, a summary with a real JPEG thumbnail, and start/end events.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
from PIL import Image

from operators.index_tables import (
    DONE,
    EVENTS,
    FAILED,
    FILES,
    FILES_SCHEMA,
    TRACK_SUMMARIES,
    TRACK_SUMMARY_SCHEMA,
    TRACKS,
    part_file,
    part_name,
)
from operators.records import EVENT_SCHEMA, TRACK_SCHEMA, Event
from operators.storage import Location, resolve
from operators.synthetic import synthetic_frame

FPS = 10
SECONDS = 4
GOP = 10  # a keyframe every second
SIZE = (160, 120)
CHECKPOINT = "facebook/sam3@test"


@dataclass(frozen=True)
class TrackSpec:
    track_id: int
    concept: str
    start_frame: int
    end_frame: int
    max_score: float

    @property
    def start_s(self) -> float:
        return self.start_frame / FPS

    @property
    def end_s(self) -> float:
        return self.end_frame / FPS

    @property
    def duration_s(self) -> float:
        return (self.end_frame - self.start_frame) / FPS


# name -> the tracks of its current (done) pass
CURRENT = {
    "a": (TrackSpec(1, "person", 5, 35, 0.92), TrackSpec(2, "person", 10, 18, 0.55), TrackSpec(3, "Red Car", 20, 39, 0.81)),
    "b": (TrackSpec(1, "person", 0, 20, 0.70), TrackSpec(2, "dog", 12, 24, 0.60)),
}
STALE = ("a", TrackSpec(9, "person", 1, 36, 0.99))  # a's first pass: must never be returned
FAILED_FILE = ("c", TrackSpec(1, "person", 0, 30, 0.95))  # c's done pass, then a failed one
INDEXED_CONCEPTS = ("person", "Red Car", "bicycle")  # bicycle was looked for and never seen
FAILED_ONLY_CONCEPT = "cat"  # only c's passes looked for it


@dataclass(frozen=True)
class IndexDataset:
    uri: str
    videos: dict[str, str]  # name -> the file's URI as the catalog holds it
    stale_part: str


def write_video(path: str | Path, seconds: int = SECONDS, fps: int = FPS, gop: int = GOP, audio: bool = False,
                codec: str = "libx264") -> Path:
    """A synthetic video with a keyframe every ``gop`` frames (and a 440 Hz AAC tone when ``audio``)."""
    path = Path(path)
    with av.open(str(path), mode="w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = SIZE
        video.pix_fmt = "yuv420p"
        video.codec_context.gop_size = gop
        if codec == "libx264":
            video.codec_context.options = {"keyint_min": str(gop), "sc_threshold": "0"}
        sound = out.add_stream("aac", rate=48000, layout="mono") if audio else None
        for index in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, SIZE, fps), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            samples = np.arange(seconds * 48000)
            tone = (0.2 * np.sin(2 * np.pi * 440 * samples / 48000)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def thumbnail_jpeg(track: TrackSpec) -> bytes:
    image = Image.fromarray(synthetic_frame(track.start_frame, SIZE, FPS)).resize((64, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _track_rows(uri: str, tracks: tuple[TrackSpec, ...], at: datetime) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {TRACKS: [], TRACK_SUMMARIES: [], EVENTS: []}
    for t in tracks:
        box = [10.0, 20.0, 60.0, 70.0]
        for frame in range(t.start_frame, t.end_frame + 1):
            rows[TRACKS].append({
                "schema_version": 1, "job": "index", "stream_id": uri, "source": uri, "frame_index": frame,
                "pts_s": frame / FPS, "ingest_ts": at, "track_id": t.track_id, "concept": t.concept,
                "score": t.max_score - 0.1 * (frame != t.start_frame + 1), "box_xyxy": box,
                "mask": {"size": [SIZE[1], SIZE[0]], "counts": "PPYo1"}, "area_px": 2500, "model": CHECKPOINT,
            })
        rows[TRACK_SUMMARIES].append({
            "uri": uri, "track_id": t.track_id, "concept": t.concept, "start_pts_s": t.start_s, "end_pts_s": t.end_s,
            "duration_s": t.duration_s, "start_frame": t.start_frame, "end_frame": t.end_frame,
            "observations": t.end_frame - t.start_frame + 1, "max_score": t.max_score, "mean_score": t.max_score - 0.1,
            "best_frame_index": t.start_frame + 1, "best_pts_s": (t.start_frame + 1) / FPS, "best_box_xyxy": box,
            "thumbnail_jpeg": thumbnail_jpeg(t), "model": CHECKPOINT, "run_id": "run",
        })
        for kind, frame in (("track_start", t.start_frame), ("track_end", t.end_frame)):
            event = Event(kind, "index", uri, at, track_id=t.track_id, concept=t.concept, frame_index=frame,
                          pts_s=frame / FPS, duration_s=t.duration_s if kind == "track_end" else None,
                          max_score=t.max_score if kind == "track_end" else None)
            rows[EVENTS].append(event.to_row())
    return rows


_SCHEMAS = {TRACKS: TRACK_SCHEMA, TRACK_SUMMARIES: TRACK_SUMMARY_SCHEMA, EVENTS: EVENT_SCHEMA}


def _write_part(root: Location, part: str, rows: dict[str, list[dict]]) -> None:
    for table, table_rows in rows.items():
        root.join(part_file(table, part)).write_parquet(pa.Table.from_pylist(table_rows, schema=_SCHEMAS[table]))


def _catalog_row(uri: str, status: str, parts: list[str], concepts: tuple[str, ...], run: str, at: datetime) -> dict:
    return {
        "uri": uri, "size_bytes": 1000, "mtime": at - timedelta(days=1), "etag": None, "duration_s": float(SECONDS),
        "frames": SECONDS * FPS, "fps": float(FPS), "status": status,
        "error": "decoding stopped at frame 12: invalid data" if status == FAILED else None,
        "concepts": list(concepts), "checkpoint": CHECKPOINT, "run_id": run, "indexed_at": at,
        "processing_s": 1.5, "next_track_id": 10, "parts": parts,
    }


def write_index_dataset(dataset_uri: str, videos: dict[str, str]) -> IndexDataset:
    """Write the dataset at ``dataset_uri`` for the videos ``a``, ``b`` and ``c`` (name -> URI)."""
    root = resolve(dataset_uri)
    root.make_dirs()
    first, second = datetime(2025, 5, 1, tzinfo=UTC), datetime(2025, 5, 2, tzinfo=UTC)
    stale_name, stale_track = STALE
    stale = part_name(videos[stale_name], "size=900", CHECKPOINT, INDEXED_CONCEPTS)
    _write_part(root, stale, _track_rows(videos[stale_name], (stale_track,), first))
    failed_name, failed_track = FAILED_FILE
    failed_part = part_name(videos[failed_name], "size=1000", CHECKPOINT, (FAILED_ONLY_CONCEPT,))
    _write_part(root, failed_part, _track_rows(videos[failed_name], (failed_track,), first))
    run1 = [_catalog_row(videos[stale_name], DONE, [stale], INDEXED_CONCEPTS, "run1", first),
            _catalog_row(videos[failed_name], DONE, [failed_part], (FAILED_ONLY_CONCEPT,), "run1", first)]
    run2 = [_catalog_row(videos[failed_name], FAILED, [failed_part], (FAILED_ONLY_CONCEPT,), "run2", second)]
    for name, tracks in CURRENT.items():
        concepts = INDEXED_CONCEPTS + ("dog",) * (name == "b")
        part = part_name(videos[name], "size=1000", CHECKPOINT, concepts)
        _write_part(root, part, _track_rows(videos[name], tracks, second))
        run2.append(_catalog_row(videos[name], DONE, [part], concepts, "run2", second))
    for run, rows in (("run1", run1), ("run2", run2)):
        root.join(FILES, f"part-{run}-0.parquet").write_parquet(pa.Table.from_pylist(rows, schema=FILES_SCHEMA))
    return IndexDataset(dataset_uri, dict(videos), stale)


def current_clips(concept: str) -> list[tuple[str, int]]:
    """(video name, track id) of every current track of ``concept`` (case-insensitive), by name then start."""
    found = [(name, t) for name, tracks in CURRENT.items() for t in tracks if t.concept.lower() == concept.lower()]
    return [(name, t.track_id) for name, t in sorted(found, key=lambda nt: (nt[0], nt[1].start_frame))]
