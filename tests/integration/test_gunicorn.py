"""docs/kubernetes.md's gunicorn.conf.py under a real gunicorn with uvicorn workers: the
multiprocess directory is emptied before the workers start, every worker's requests are
in each scrape, and a killed worker's live gauges leave through the child_exit hook."""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from amani_observability._startup import GUNICORN_PRELOAD, WORKERS_WITHOUT_MULTIPROC
from tests.conftest import free_port
from tests.integration.test_metrics_multiprocess import sample_sum
from tests.support import ROOT, ServerProcess, wait_for
from tests.test_docs_examples import fenced_blocks

pytestmark = pytest.mark.integration

WORKERS = 2


def documented_config() -> str:
    """The page's gunicorn.conf.py block, as a reader copies it."""
    blocks = fenced_blocks((ROOT / "docs" / "kubernetes.md").read_text("utf-8"))
    [config] = [b.source for b in blocks if b.source.startswith("# gunicorn.conf.py\n")]
    return config


def live_gauge_files(directory: Path) -> list[Path]:
    return list(directory.glob("gauge_livesum_*.db"))


def test_the_documented_gunicorn_setup_counts_every_worker_and_forgets_a_killed_one(
    tmp_path: Path,
) -> None:
    multiproc_dir = tmp_path / "prometheus-multiproc"
    multiproc_dir.mkdir()
    # A previous container's worker left its counter behind (the emptyDir survives restarts).
    stale = multiproc_dir / "counter_4242.db"
    stale.write_bytes(b"\0" * 64)
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(documented_config())
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "gunicorn", "tests.integration.metrics_app:app",
        "--config", str(config),
        # The command line wins over the file: a loopback port, two workers.
        "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
    ]  # fmt: skip
    server = ServerProcess(
        argv,
        log_path=tmp_path / "gunicorn.log",
        ready_url=f"{base_url}/health",
        ready_status=200,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
        cwd=ROOT,
    )
    served_by: collections.Counter[int] = collections.Counter()
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection, any worker
    with server, httpx.Client(base_url=base_url, limits=limits, timeout=10) as http:
        assert not stale.exists(), server.output()
        deadline = time.monotonic() + 60
        while len(served_by) < WORKERS or sum(served_by.values()) < 100:
            assert time.monotonic() < deadline, f"served by {dict(served_by)} in 60 s"
            assert sum(served_by.values()) < 5000, f"one worker only: {dict(served_by)}"
            served_by[http.get("/pid").json()["pid"]] += 1
        victim = min(served_by)
        live_gauges = multiproc_dir / f"gauge_livesum_{victim}.db"
        assert live_gauges.exists()

        os.kill(victim, signal.SIGKILL)  # no clean shutdown: only child_exit can clean up
        wait_for("child_exit to drop its live gauges", lambda: not live_gauges.exists(), 30)
        # gunicorn replaces the worker; scrapes then come from the survivors.
        wait_for(
            "a replacement worker", lambda: len(live_gauge_files(multiproc_dir)) == WORKERS, 30
        )
        scrape = http.get("/metrics").text

    sent = sum(served_by.values())
    # The dead worker's counters stay in the totals, as counters should.
    assert sample_sum(scrape, "http_requests_total", endpoint="/pid") == sent
    assert sample_sum(scrape, "http_requests_in_progress") == 0.0
    assert not (multiproc_dir / "counter_4242.db").exists()


def test_a_preloading_gunicorn_master_warns_once_about_preload_and_the_missing_directory(
    tmp_path: Path,
) -> None:
    """instrument() runs once, in the master, before the workers fork: one warning each."""
    port = free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "tests.integration.metrics_app:app",
        "--worker-class", "uvicorn_worker.UvicornWorker", "--preload",
        "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    server = ServerProcess(
        argv,
        log_path=tmp_path / "gunicorn.log",
        ready_url=f"http://127.0.0.1:{port}/health",
        ready_status=200,
        env={**environment, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    with server:
        pass
    output = server.output()
    assert output.count(GUNICORN_PRELOAD) == 1, output
    assert output.count(WORKERS_WITHOUT_MULTIPROC % WORKERS) == 1, output
