"""Prometheus metrics of a running index job: its files by state, its frames, and its engines.

Served by the driver on ``metrics.port`` like a streaming job's (the engine families are the same,
:class:`~pipeline.metrics.JobMetrics`'), so one dashboard and one scrape config cover both.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pipeline.metrics import JobMetrics

FILE_STATES = ("queued", "in_flight", "done", "failed", "up_to_date", "failed_before")


@dataclass(frozen=True)
class IndexSnapshot:
    queued: int = 0
    in_flight: int = 0
    done: int = 0
    failed: int = 0
    up_to_date: int = 0
    failed_before: int = 0  # failed in an earlier run and not retried in this one
    frames: int = 0


class IndexMetrics(JobMetrics):
    def __init__(self, job: str):
        super().__init__(job)
        self._index_lock = threading.Lock()
        self._index = IndexSnapshot()

    def update_index(self, snapshot: IndexSnapshot, engines: dict) -> None:
        with self._index_lock:
            self._index = snapshot
        self.update({}, engines)

    def collect(self):
        yield from super().collect()
        with self._index_lock:
            snapshot = self._index
        files = GaugeMetricFamily("sam3_index_files", "Files of the index run, by state", labels=["job", "state"])
        for state in FILE_STATES:
            files.add_metric([self.job, state], getattr(snapshot, state))
        yield files
        frames = CounterMetricFamily("sam3_index_frames", "Frames processed by the index run",
                                     labels=["job"])
        frames.add_metric([self.job], snapshot.frames)
        yield frames
