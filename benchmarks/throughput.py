"""Throughput through a real server: uvicorn + the benchmark route, loaded by wrk.

    python -m benchmarks.throughput [--seconds 10] [--rounds 3] [--connections 32]

Runs uvicorn (one worker, on a loopback port) serving the bare app and the fully
instrumented app in turn, round after round, loads each with wrk for a fixed time, and
reports the median requests per second of each and their ratio. Needs Debian's `wrk`
(`apt-get install wrk`). Every run is bounded by --seconds; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.85
APPS = {
    "bare FastAPI": "benchmarks.server_apps:bare",
    "full amani stack": "benchmarks.server_apps:full",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(app_path: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app_path, "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/items/1", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{app_path} did not start")


def _wrk(port: int, seconds: int, connections: int) -> float:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/items/1"],
        check=True, capture_output=True, text=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None or "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk run was not clean:\n{output}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/throughput.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    samples: dict[str, list[float]] = {name: [] for name in APPS}
    for _ in range(args.rounds):
        for name, app_path in APPS.items():
            port = _free_port()
            server = _serve(app_path, port)
            try:
                _wrk(port, 2, args.connections)  # warm-up
                samples[name].append(_wrk(port, args.seconds, args.connections))
            finally:
                server.terminate()
                server.wait(timeout=15)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratio = medians["full amani stack"] / medians["bare FastAPI"]
    for name, value in medians.items():
        print(f"{name:<20} {value:>10.0f} req/s")
    verdict = "ok" if ratio >= TARGET else "MISSED"
    print(f"full stack / bare    {ratio:>10.3f}  (target >= {TARGET}) {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "requests_per_second": medians,
        "samples": samples,
        "ratio": round(ratio, 3),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
