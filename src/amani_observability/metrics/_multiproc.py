"""Stale files in PROMETHEUS_MULTIPROC_DIR: a previous run's counts added to this run's.

prometheus_client keeps each process's values in files named after its pid
(`counter_1234.db`) and adds up every file at each scrape. Files of workers that died
during this run belong in the totals; files from before the server started do not: they
inflate counters and leave in-progress gauges stuck. The check runs once per worker at
start-up and says how many there are and how to avoid them.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

STALE_FILES = (
    "PROMETHEUS_MULTIPROC_DIR %s holds %d file(s) of %d process(es) that no longer exist, "
    "written before this server started: their counts are added to this run's totals. "
    "Empty the directory before the server starts (docs/metrics.md#several-worker-processes)"
)

_PID_FILE = re.compile(r"[a-z_]+_(\d+)\.db").fullmatch
# A process's start time, in clock ticks after boot: field 22 of /proc/PID/stat.
_STARTTIME_FIELD = 22


def stale_files(directory: str, server_started: float) -> tuple[int, int]:
    """(files, processes) in `directory` of processes that no longer exist, last written
    before `server_started` (seconds since the epoch)."""
    files = 0
    pids: set[int] = set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0, 0
    for entry in entries:
        match = _PID_FILE(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            written = entry.stat().st_mtime
        except OSError:
            continue
        if written < server_started and not _alive(pid):
            files += 1
            pids.add(pid)
    return files, len(pids)


def server_start_time() -> float:
    """When the server started: its master's start when this process is one of its
    workers (uvicorn --workers, gunicorn), else this process's own; now where the
    system does not say (no /proc)."""
    parent = os.getppid()
    pid = parent if _is_server(parent) else os.getpid()
    started = _process_start_time(pid)
    return time.time() if started is None else started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's
        return True
    return True


def _is_server(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"uvicorn" in command or b"gunicorn" in command


def _process_start_time(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # The command name (field 2) may hold spaces: count fields after its ")".
        ticks = int(stat.rpartition(")")[2].split()[_STARTTIME_FIELD - 3])
    except (OSError, ValueError, IndexError):
        return None
    # Both in seconds since boot, to 1/100 s; /proc/stat's btime is whole seconds.
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, None when unset or empty."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
