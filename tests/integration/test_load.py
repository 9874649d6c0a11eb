"""examples/load.py (`make load`) against the demo under a real uvicorn."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.support import ROOT, UvicornProcess

pytestmark = pytest.mark.integration

SUMMARY_LINE = re.compile(
    r"^  (?P<method>[A-Z]+) (?P<route>\S+) (?P<status>\d{3}): (?P<count>\d+)$"
)


def load(base_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.load", "--base-url", base_url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scraped_requests(base_url: str) -> dict[tuple[str, str, str], float]:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return {
        (s.labels["method"], s.labels["endpoint"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "http_requests"
        for s in family.samples
        if s.name == "http_requests_total"
    }


def test_load_drives_every_route_of_the_mix_and_the_metrics_count_each_response(
    tmp_path: Path,
) -> None:
    with UvicornProcess(
        "examples.demo_app.main:app", free_port(), log_path=tmp_path / "uvicorn.log"
    ) as demo:
        started = time.monotonic()
        result = load(demo.base_url, "--duration", "2", "--concurrency", "3", "--seed", "7")
        took = time.monotonic() - started
        scraped = scraped_requests(demo.base_url)

    assert result.returncode == 0, result.stderr
    # Bounded: 2 s of traffic, plus at most one slow request (2.5 s) and start-up.
    assert took < 12
    progress = result.stderr.splitlines()
    assert progress[0] == f"driving {demo.base_url} for 2 s with 3 clients"
    assert progress[-1].startswith("[##############################] ")

    reported = {}
    for line in result.stdout.splitlines()[1:]:
        match = SUMMARY_LINE.match(line)
        assert match, line
        key = (match["method"], match["route"], match["status"])
        reported[key] = float(match["count"])
    total = int(result.stdout.split()[0])
    assert sum(reported.values()) == total
    assert {(route, status) for _, route, status in reported} == {
        ("/health", "200"),
        ("/api/v1/users/register", "201"),
        ("/api/v1/escrow/transactions", "201"),
        ("/api/v1/escrow/transactions/{transaction_id}", "200"),
        ("/api/v1/escrow/transactions/{transaction_id}", "404"),
        ("/api/v1/kyc/submissions", "202"),
        ("/api/v1/slow", "200"),
        ("/api/v1/fail", "500"),
    }
    # The runner's start-up probe is one more /health the load tool did not send.
    reported[("GET", "/health", "200")] += 1
    assert scraped == reported


def test_load_fails_clearly_when_nothing_listens() -> None:
    started = time.monotonic()
    result = load(f"http://127.0.0.1:{free_port()}", "--duration", "1", "--concurrency", "2")
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    assert result.stdout.splitlines()[0].startswith("0 responses, ")
    assert result.stderr.splitlines()[-1] == (
        f"no response from {result.args[4]}: is the demo running (make demo)?"
    )
