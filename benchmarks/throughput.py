"""Throughput through a real server: uvicorn serving a route, loaded by wrk.

    python -m benchmarks.throughput [--seconds 10] [--rounds 3] [--connections 32]

Two routes, each served bare and under the whole stack:
- the benchmark route, which does nothing but answer: the stack's cost is in full view,
  and the >= 0.85x target applies here;
- the demo route: GET of one escrow transaction in the demo service, which reads it
  from SQLite in a worker thread; the instrumented side is the demo as main.py wires
  it (database metrics included) with the whole stack on. Reported without a verdict:
  its throughput is set by how the GIL passes between the event loop and the worker
  threads, and the same bare server gives runs 20 % apart (docs/performance.md).

Runs uvicorn (one worker, on a loopback port) serving each app in turn, round after
round, loads each with wrk for a fixed time, and reports the median requests per second
of each and the ratios. Needs Debian's `wrk` (`apt-get install wrk`). Every run is
bounded by --seconds; nothing leaves 127.0.0.1.
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

from benchmarks.server_apps import DEMO_TRANSACTION

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.85
TARGET_ROUTE = "benchmark route"
# route: (path, bare app, instrumented app)
ROUTES = {
    TARGET_ROUTE: (
        "/items/1",
        "benchmarks.server_apps:bare",
        "benchmarks.server_apps:full",
    ),
    "demo route": (
        f"/api/v1/escrow/transactions/{DEMO_TRANSACTION}",
        "benchmarks.server_apps:demo_bare",
        "benchmarks.server_apps:demo_full",
    ),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(app_path: str, port: int, path: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app_path, "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{app_path} did not start")


def _wrk(port: int, path: str, seconds: int, connections: int) -> float:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
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
    servers = [
        (route, side, path, app_path)
        for route, (path, bare, full) in ROUTES.items()
        for side, app_path in (("bare", bare), ("full", full))
    ]
    samples: dict[str, dict[str, list[float]]] = {
        route: {"bare": [], "full": []} for route in ROUTES
    }
    for _ in range(args.rounds):
        for route, side, path, app_path in servers:
            port = _free_port()
            server = _serve(app_path, port, path)
            try:
                _wrk(port, path, 2, args.connections)  # warm-up
                samples[route][side].append(_wrk(port, path, args.seconds, args.connections))
            finally:
                server.terminate()
                server.wait(timeout=15)
    results: dict[str, dict[str, object]] = {}
    ratios: dict[str, float] = {}
    for route, sides in samples.items():
        medians = {side: statistics.median(values) for side, values in sides.items()}
        ratios[route] = round(medians["full"] / medians["bare"], 3)
        results[route] = {"requests_per_second": medians, "samples": sides, "ratio": ratios[route]}
        print(f"{route}: bare {medians['bare']:.0f} req/s, full stack {medians['full']:.0f} req/s")
    ratio = ratios[TARGET_ROUTE]
    verdict = "ok" if ratio >= TARGET else "MISSED"
    print(f"benchmark route: full / bare {ratio:.3f}  (target >= {TARGET}) {verdict}")
    print(f"demo route:      full / bare {ratios['demo route']:.3f}  (no target)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "routes": results,
        "target": TARGET,
        "target_route": TARGET_ROUTE,
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
