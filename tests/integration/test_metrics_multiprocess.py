"""/metrics under a real `uvicorn --workers 2` with PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from amani_observability.metrics._multiproc import STALE_FILES
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


def scrape_total(base_url: str, requests: int) -> float:
    """Serve `requests` requests to /pid, then scrape: the total /metrics reports."""
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base_url, limits=limits, timeout=10) as http:
        for _ in range(requests):
            assert http.get("/pid").status_code == 200
        return sample_sum(http.get("/metrics").text, "http_requests_total", endpoint="/pid")


def test_files_of_a_previous_run_are_reported_at_start_up(tmp_path: Path) -> None:
    """A second run on the same directory adds the first run's counts (the issue saw 105
    for 5 requests): each worker says so once, naming the count and the fix."""
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with UvicornProcess(
        "tests.integration.metrics_app:app", free_port(), env=env, log_path=tmp_path / "1.log"
    ) as first:
        assert scrape_total(first.base_url, 5) == 5
    left = sorted(p.name for p in multiproc_dir.iterdir())
    # A previous run, as in production: its files were last written well before this
    # start (the server's start time is known to the second only, from /proc).
    an_hour_ago = time.time() - 3600
    for name in left:
        os.utime(multiproc_dir / name, (an_hour_ago, an_hour_ago))
    with UvicornProcess(
        "tests.integration.metrics_app:app", free_port(), env=env, log_path=tmp_path / "2.log"
    ) as second:
        assert scrape_total(second.base_url, 5) == 10
    warning = STALE_FILES % (multiproc_dir, len(left), 1)
    assert second.output().count(warning) == 1
    assert "no longer exist" not in first.output()
