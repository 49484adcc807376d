"""A stream's frames on their way to the engine: decoded ahead on a thread, and skipped or
renumbered after a resume."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace

from operators.resume_point import ResumePoint
from operators.video_source import Frame
from pipeline.stream_stats import StreamCounters


def frames_after(frames: Iterable[Frame], resume: ResumePoint, live: bool) -> Iterator[Frame]:
    """The frames a resumed stream still has to handle. A file source is decoded again from its
    start and skips what the resume point covers; a live source goes on from now, numbered on."""
    if live:
        offset, pts = resume.frame_index + 1, resume.pts_s
        for frame in frames:
            yield replace(frame, index=frame.index + offset, pts_s=frame.pts_s + pts)
        return
    for frame in frames:
        if frame.index > resume.frame_index:
            yield frame


def decode_ahead(frames: Iterable[Frame], window: int, live: bool, counters: StreamCounters,
                 stop: threading.Event) -> Iterator[Frame]:
    """Decode on a background thread into a bounded buffer: live sources drop the oldest frame
    when the engine falls behind (counted); files block the decoder instead (never drop)."""
    from operators.live_source import FrameWindow

    buffer = FrameWindow(window * 2, drop_oldest=live)
    errors: list[BaseException] = []

    def decode() -> None:
        try:
            for frame in frames:
                counters.frames_decoded += 1
                if not buffer.put(frame) or stop.is_set():
                    break
        except BaseException as e:
            errors.append(e)
        finally:
            buffer.close()

    threading.Thread(target=decode, name="decode", daemon=True).start()
    while True:
        item = buffer.get()
        counters.frames_dropped = buffer.dropped
        if item is None:
            break
        yield item
    if errors:
        raise errors[0]
