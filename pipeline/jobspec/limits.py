"""``limits:``: how big a job may be, checked while the job file is read, before anything is started.

Each stream is a Ray actor with its own decoder, frame buffers and tracker state; each concept of
a watchlist is one more detector pass on every frame of every stream that watches it. A job past
these limits is refused with one line instead of running out of memory or crawling; raise a limit
when the cluster has room for it.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.jobspec.common import Spec

DEFAULT_MAX_STREAMS = 1000
DEFAULT_MAX_CONCEPTS = 256


class LimitsSpec(Spec):
    max_streams: int = Field(DEFAULT_MAX_STREAMS, ge=1)  # streams of one job
    max_concepts: int = Field(DEFAULT_MAX_CONCEPTS, ge=1)  # rules (concepts) of one watchlist


def too_many_streams(count: int, limits: LimitsSpec) -> str | None:
    if count <= limits.max_streams:
        return None
    return (f"{count} streams, more than limits.max_streams ({limits.max_streams}) (each stream is a Ray actor "
            "with its own decoder and buffers: split the job, or raise limits.max_streams)")


def too_many_concepts(count: int, limits: LimitsSpec) -> str | None:
    if count <= limits.max_concepts:
        return None
    return (f"{count} concepts, more than limits.max_concepts ({limits.max_concepts}) (SAM 3 runs its detector "
            "once per concept on every frame: split the watchlist across streams or jobs, or raise "
            "limits.max_concepts)")
