"""Stale files in PROMETHEUS_MULTIPROC_DIR: only a previous run's, of dead processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from amani_observability.metrics._multiproc import stale_files


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def test_only_files_of_dead_processes_written_before_the_start_are_stale(tmp_path: Path) -> None:
    started = time.time()
    before, after = started - 3600, started + 60
    gone, died_during_this_run = dead_pid(), dead_pid()
    files = {
        f"counter_{gone}.db": before,  # a previous run's worker: stale
        f"histogram_{gone}.db": before,
        f"gauge_livesum_{gone}.db": before,
        f"counter_{died_during_this_run}.db": after,  # belongs in this run's totals
        f"counter_{os.getpid()}.db": before,  # alive
        "notes.txt": before,  # not prometheus_client's
    }
    for name, written in files.items():
        path = tmp_path / name
        path.write_bytes(b"")
        os.utime(path, (written, written))
    assert stale_files(str(tmp_path), started) == (3, 1)


def test_a_missing_directory_has_no_stale_files(tmp_path: Path) -> None:
    assert stale_files(str(tmp_path / "absent"), time.time()) == (0, 0)
