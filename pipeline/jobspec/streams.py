"""``watchlists:`` rules and ``streams:``: what each stream watches for, and where its frames come from."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from operators.sources import LIVE_SCHEMES, SourceKind, is_live, source_kind
from pipeline.jobspec.common import NAME, Spec, base_dir, local_path
from pipeline.validation_errors import FieldProblem, describe_value

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(//)?")  # a scheme, with or without the '//' it needs
_ALLOWED_SOURCES = "a file path, a glob, a directory, rtsp://, rtsps://, http:// or https://"


def _polygon(value: Any) -> Any:
    """A zone: >= 3 ``[x, y]`` pixel points enclosing a non-zero area."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"a zone is a list of [x, y] points, got {describe_value(value)}")
    for index, point in enumerate(value):
        ok = isinstance(point, list | tuple) and len(point) == 2 and all(_finite_number(c) for c in point)
        if not ok:
            raise FieldProblem((index,), f"a zone point is [x, y] in pixels, got {describe_value(point)}")
    if len(value) < 3:
        raise ValueError(f"a zone polygon needs at least 3 [x, y] points (got {len(value)})")
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(value, [*value[1:], value[0]], strict=True))
    if abs(area) < 1e-9:
        raise ValueError("zone polygon encloses no area (its points are on one line); list its corners in order")
    return value


def _finite_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


Polygon = Annotated[list[tuple[float, float]], BeforeValidator(_polygon)]


class ConceptRule(Spec):
    concept: str
    threshold: float = 0.5
    min_frames: int = Field(1, ge=1)  # a track is reported once seen this many frames ...
    min_seconds: float = Field(0.0, ge=0)  # ... and this long
    zones: list[Polygon] | None = None  # only objects inside one of these (pixels of the frame)

    @field_validator("concept")
    @classmethod
    def _concept(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("empty concept (write a noun phrase such as 'forklift')")
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value} (a score threshold; default 0.5)")
        return value


class StreamSpec(Spec):
    id: str
    source: str  # after validation: a URL, or an absolute path / glob (dirs keep a trailing '/')
    fps: float | None = Field(None, gt=0)  # sampling rate; None = every frame
    watchlist: str
    zones: list[Polygon] | None = None  # default zones for the watchlist's rules that have none
    live: bool | None = Field(None, validate_default=True)  # after validation: always a bool
    loop: bool = False  # replay a file source forever (demos, soak tests)
    max_in_flight: int | None = Field(None, ge=1)  # after JobSpec validation: always an int

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"stream id {value!r} may only use letters, digits, '_', '.' and '-' "
                             "(it names Kafka keys and Parquet partitions)")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError(f"empty source (use {_ALLOWED_SOURCES})")
        match = _URL.match(value)
        if match is None:
            return local_path(value, base_dir(info))
        scheme = match.group(1).lower()
        if scheme == "file" and match.group(2):
            parts = urlsplit(value)
            if parts.netloc not in ("", "localhost"):
                raise ValueError("file:// URLs must be local (file:///path/to/video.mp4)")
            return local_path(unquote(parts.path), base_dir(info))
        if scheme not in LIVE_SCHEMES:
            raise ValueError(f"unsupported scheme '{scheme}' — use {_ALLOWED_SOURCES}")
        if not match.group(2):
            raise ValueError(f"malformed URL (write {scheme}://HOST[:PORT]/PATH)")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise ValueError(f"malformed {scheme}:// URL: {e}") from None
        if not parts.hostname:
            raise ValueError(f"URL has no host (write {scheme}://HOST[:PORT]/PATH)")
        return value

    @field_validator("watchlist")
    @classmethod
    def _watchlist(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty watchlist name (name one defined under watchlists:, or a watchlist file)")
        return value

    @field_validator("live")
    @classmethod
    def _live(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        source = info.data.get("source")
        if value is None and source is not None:
            return is_live(source)
        return value

    @field_validator("loop")
    @classmethod
    def _loop(cls, value: bool, info: ValidationInfo) -> bool:
        source = info.data.get("source")
        if value and source is not None and is_live(source):
            raise ValueError("only file, glob and directory sources can loop (remove 'loop: true')")
        return value

    @property
    def source_kind(self) -> SourceKind:
        return source_kind(self.source)
