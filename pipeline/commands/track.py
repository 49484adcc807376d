"""``sam3-stream track VIDEO``: text- or box-prompted SAM 3 tracking of one video file."""

from __future__ import annotations

import argparse
import logging
import time

from tqdm import tqdm

from pipeline.commands.args import UsageError, add_model_args, parse_box
from pipeline.exit_codes import ExitCode

logger = logging.getLogger(__name__)

STREAM = "video"


def register(sub) -> None:
    trk = sub.add_parser("track", help="track every instance of concepts (or boxed objects) through a video")
    trk.add_argument("video", metavar="VIDEO")
    add_model_args(trk)
    trk.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a concept to track; repeatable")
    trk.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                     help="an object to track, boxed on the first frame in pixels; repeatable")
    trk.add_argument("--fps", type=float, default=None, help="sample the video at this rate (default: every frame)")
    trk.add_argument("--threshold", type=float, default=None,
                     help="detection score threshold (default: the checkpoint's, 0.5; the new-track threshold "
                          "scales with it)")
    trk.add_argument("--hotstart", choices=["tentative", "off"], default="tentative",
                     help="tentative: new tracks are flagged until SAM 3's hot-start confirms them (default); "
                          "off: never retract")
    trk.add_argument("--out", metavar="FILE.jsonl|FILE.parquet", help="one record per (frame, object)")
    trk.add_argument("--overlay", metavar="OUT.mp4", help="write the video with masks and track ids drawn")
    trk.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    trk.set_defaults(handler=run_track)


def run_track(args: argparse.Namespace) -> int:
    """Decode, track and write records; a decode failure keeps every record written before it (exit 3)."""
    from operators.track_records import TrackRecordWriter, frame_records
    from operators.video_source import VideoSourceError, open_video
    from sam3_runtime.model import load_model
    from sam3_runtime.video.engine import StreamingEngine
    from sam3_runtime.video.types import EngineOptions

    if not args.prompt and not args.box:
        raise UsageError("nothing to track: give --prompt TEXT and/or --box x0,y0,x1,y1")
    boxes = [parse_box(b, allow_negative=False)[0] for b in args.box]
    source = open_video(args.video, fps=args.fps)  # opening errors surface before the model loads
    info = source.info
    for b in boxes:
        if b[0] < 0 or b[1] < 0 or b[2] > info.width or b[3] > info.height:
            raise UsageError(f"--box {list(b)} lies outside the {info.width}x{info.height} video")
    loaded = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
    engine = StreamingEngine(loaded, EngineOptions(hotstart_mode=args.hotstart))
    engine.open_session(STREAM, args.prompt, detection_threshold=args.threshold)
    for b in boxes:
        engine.add_box(STREAM, b)

    writer = TrackRecordWriter(args.out) if args.out else None
    overlay = _Overlay(args.overlay, info) if args.overlay else None
    frames = tracks = 0
    failure = None
    started = time.perf_counter()
    bar = tqdm(total=info.frame_count if args.fps is None else None, unit="frame", desc="tracking", disable=args.quiet)
    try:
        for frame in source:
            result = engine.step({STREAM: frame.image})[STREAM]
            if result.error:
                raise ValueError(result.error)
            if writer:
                writer.write(frame_records(result, frame.pts_s, frame.index))
            if overlay:
                overlay.write(frame.image, result, frame.pts_s)
            frames += 1
            tracks = max(tracks, max((o.track_id + 1 for o in result.objects), default=0))
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - started):.1f}", objects=len(result.objects))
    except VideoSourceError as e:
        failure = e
    finally:
        bar.close()
        if writer:
            writer.close()
        if overlay:
            overlay.close()
    if writer:
        logger.info("wrote %d records for %d frames to %s", writer.rows_written, frames, args.out)
    if failure is not None:
        logger.error("%s (kept the %d frames decoded before it)", failure, frames)
        return ExitCode.PARTIAL
    if frames == 0:
        raise ValueError(f"{args.video}: no frame to track (empty video, or --fps skips everything)")
    if source.truncated:
        logger.error("%s ends before the length its header declares: the file is truncated (kept the %d frames "
                     "decoded before the end)", args.video, frames)
        return ExitCode.PARTIAL
    return ExitCode.OK


class _Overlay:
    """The video with every object's mask, box and id drawn, colours stable per track id."""

    def __init__(self, path: str, info):
        from operators.video_writer import VideoWriter

        self._writer = VideoWriter(path, fps=info.average_fps or 10.0, size=(info.width, info.height))

    def write(self, image, result, pts_s: float) -> None:
        import numpy as np

        from sam3_runtime.overlay import draw_instances

        objs = result.objects
        labels = [f"{o.track_id} {o.concept}{'?' if o.tentative else ''}" for o in objs]
        canvas = draw_instances(image, [o.mask for o in objs], [o.box_xyxy for o in objs], labels,
                                color_ids=[o.track_id for o in objs])
        self._writer.write(np.asarray(canvas), pts_s)

    def close(self) -> None:
        self._writer.close()
