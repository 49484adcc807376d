"""EngineLink: one stream's session on its engine actor, with numbered frames in flight.

The engine steps a session's frames strictly by their sequence number (0, 1, 2, ... from the
session's ``open``), so the link numbers what it sends and collects results oldest first. When
the engine actor dies, Ray restarts it; the link waits for it, opens the session again and
re-sends every frame that was in flight, so no decoded frame is lost. The result after a
re-open comes from a session that numbers its objects afresh: ``Collected.new_session`` tells
the caller to re-link its tracks on it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

if TYPE_CHECKING:
    from operators.video_source import Frame
    from sam3_runtime.video.types import FrameResult

logger = logging.getLogger(__name__)

ENGINE_WAIT_S = 120.0  # how long a stream waits for a restarted engine before it fails
_OPEN_TIMEOUT_S = 10.0  # one open() attempt; a restarting actor may not answer at all
_RETRY_S = 0.5


@dataclass(frozen=True)
class Collected:
    frame: Frame
    result: FrameResult
    new_session: bool  # the first result of a session: its engine ids are new


class EngineLink:
    """Sends one stream's frames to its engine and collects the results in order."""

    def __init__(self, engine: Any, stream_id: str, concepts: Sequence[str], detection_threshold: float, *,
                 window: int, wait_s: float = ENGINE_WAIT_S, on_engine_restart: Callable[[], None] | None = None):
        self.engine = engine  # an EngineActor handle
        self.stream_id = stream_id
        self.concepts = list(concepts)
        self.detection_threshold = detection_threshold
        self.window = max(1, window)
        self.wait_s = wait_s
        self._on_engine_restart = on_engine_restart
        self._in_flight: deque[tuple[Frame, ray.ObjectRef]] = deque()
        self._sent = 0  # frames sent to the current session (their sequence numbers)
        self._session_fresh = False  # no result collected from the current session yet

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def full(self) -> bool:
        """The window is full: collect before sending more."""
        return len(self._in_flight) >= self.window

    def open(self) -> None:
        """Open the stream's session on the engine (a session it already had there starts over).

        An engine that is dead or unreachable (its node just went away) is waited for, as in ``collect``.
        """
        try:
            ray.get(self.engine.open.remote(self.stream_id, self.concepts, self.detection_threshold))
        except RayActorError as e:
            self._recover(e)
            return
        self._started_session()

    def change_concepts(self, add: Sequence[str], remove: Sequence[str], detection_threshold: float) -> None:
        """Between two frames (nothing in flight): detect ``add``, stop detecting ``remove``.

        A ``detection_threshold`` below the session's needs a session that detects that low: the
        session is re-opened (its next result is a new session, whose objects the caller re-links).
        An engine that died meanwhile is waited for and re-opened with the new concepts.
        """
        if self._in_flight:
            raise RuntimeError(f"stream {self.stream_id!r}: concepts change between frames, {self.in_flight} in flight")
        self.concepts = [c for c in self.concepts if c not in remove] + [c for c in add if c not in self.concepts]
        try:
            if detection_threshold < self.detection_threshold:
                self.detection_threshold = detection_threshold
                self.open()
                return
            for concept in remove:
                ray.get(self.engine.remove_concept.remote(self.stream_id, concept))
            for concept in add:
                ray.get(self.engine.add_concept.remote(self.stream_id, concept))
        except RayActorError as e:
            self._recover(e)

    def send(self, frame: Frame) -> None:
        self._in_flight.append((frame, self._send(frame)))

    def collect(self) -> Collected:
        """The oldest frame in flight and its result; waits for a restarted engine when it died.

        Raises ``ValueError`` when the engine refused the frame, ``RuntimeError`` when a dead
        engine did not come back within ``wait_s``.
        """
        if not self._in_flight:
            raise RuntimeError(f"stream {self.stream_id!r}: no frame in flight to collect")
        while True:
            frame, ref = self._in_flight[0]
            try:
                result = ray.get(ref)
                break
            except RayActorError as e:
                self._recover(e)
        self._in_flight.popleft()
        if result.error:
            raise ValueError(result.error)
        new_session, self._session_fresh = self._session_fresh, False
        return Collected(frame, result, new_session)

    def discard(self) -> None:
        """Forget the frames in flight (the stream is failing and will not collect them)."""
        self._in_flight.clear()

    def close(self) -> None:
        """Close the session; an engine that is gone has nothing to close."""
        self._in_flight.clear()
        with contextlib.suppress(RayActorError):
            ray.get(self.engine.close.remote(self.stream_id))

    def _started_session(self) -> None:
        self._sent = 0
        self._session_fresh = True

    def _send(self, frame: Frame) -> ray.ObjectRef:
        ref = self.engine.process.remote(self.stream_id, self._sent, frame.image)
        self._sent += 1
        return ref

    def _recover(self, error: Exception) -> None:
        logger.warning("stream %s: engine failed (%s); waiting for its restart", self.stream_id, error)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                ray.get(self.engine.open.remote(self.stream_id, self.concepts, self.detection_threshold),
                        timeout=_OPEN_TIMEOUT_S)
                break
            except (RayActorError, GetTimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not come back within {self.wait_s:.0f} s") from error
                time.sleep(_RETRY_S)
        self._started_session()
        if self._on_engine_restart is not None:
            self._on_engine_restart()
        frames = [frame for frame, _ in self._in_flight]
        self._in_flight.clear()
        for frame in frames:  # nothing decoded is lost: the frames in flight go to the new session
            self.send(frame)
