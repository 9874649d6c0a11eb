"""/metrics under a real `uvicorn --workers 2` with PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.support import UvicornProcess

pytestmark = pytest.mark.integration


def sample_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_every_workers_requests_are_in_the_scraped_total(tmp_path: Path) -> None:
    """N requests served by two workers: any scrape reports exactly N."""
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    served_by: collections.Counter[int] = collections.Counter()
    with UvicornProcess(
        "tests.integration.metrics_app:app",
        free_port(),
        env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
        args=("--workers", "2"),
        log_path=tmp_path / "uvicorn.log",
    ) as server:
        # No keep-alive: every request is a new connection, so both workers get some.
        limits = httpx.Limits(max_keepalive_connections=0)
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=server.base_url, limits=limits, timeout=10) as http:
            while len(served_by) < 2 or sum(served_by.values()) < 200:
                assert time.monotonic() < deadline, f"served by {dict(served_by)} in 60 s"
                assert sum(served_by.values()) < 5000, f"one worker only: {dict(served_by)}"
                served_by[http.get("/pid").json()["pid"]] += 1
            scrapes = [http.get("/metrics").text for _ in range(4)]

    sent = sum(served_by.values())
    assert len(served_by) == 2
    for text in scrapes:
        assert sample_sum(text, "http_requests_total", endpoint="/pid") == sent
        assert sample_sum(text, "http_request_duration_seconds_count", endpoint="/pid") == sent
        assert sample_sum(text, "http_requests_in_progress") == 0.0
    # Each worker forgot its live gauges at shutdown; the counters' files stay.
    files = sorted(p.name for p in multiproc_dir.iterdir())
    assert [f for f in files if f.startswith("gauge_livesum")] == []
    assert sorted(f for f in files if f.startswith("counter_")) == sorted(
        f"counter_{pid}.db" for pid in served_by
    )
