"""``sam3-stream track VIDEO``: text- or box-prompted SAM 3 tracking of one video file."""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

logger = logging.getLogger(__name__)

STREAM = "video"


def run_track(args) -> int:
    """Decode, track and write records; a decode failure keeps every record written before it (exit 3)."""
    from operators.track_records import TrackRecordWriter, frame_records
    from operators.video_source import VideoSourceError, open_video
    from pipeline.cli import parse_box
    from sam3_runtime.model import load_model
    from sam3_runtime.video.engine import StreamingEngine
    from sam3_runtime.video.types import EngineOptions

    if not args.prompt and not args.box:
        raise ValueError("nothing to track: give --prompt TEXT and/or --box x0,y0,x1,y1")
    boxes = [parse_box(b, allow_negative=False)[0] for b in args.box]
    source = open_video(args.video, fps=args.fps)  # opening errors surface before the model loads
    info = source.info
    for b in boxes:
        if b[0] < 0 or b[1] < 0 or b[2] > info.width or b[3] > info.height:
            raise ValueError(f"--box {list(b)} lies outside the {info.width}x{info.height} video")
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
        return 3
    if frames == 0:
        raise ValueError(f"{args.video}: no frame to track (empty video, or --fps skips everything)")
    if source.truncated:
        logger.error("%s ends before the length its header declares: the file is truncated (kept the %d frames "
                     "decoded before the end)", args.video, frames)
        return 3
    return 0


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
