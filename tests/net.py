"""Loopback helpers the tests share: a free port, and a Prometheus endpoint read back as samples."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (someone else may take it before it is bound again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``/metrics`` on 127.0.0.1:port as {(sample name, sorted label items): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_served(metrics) -> dict[tuple[str, tuple], float]:
    """Serve ``metrics`` (a ``JobMetrics``) on a free loopback port, scrape it once, and close it."""
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    try:
        return scrape(port)
    finally:
        metrics.close()
