"""Scrape cost: our /metrics exposition against prometheus_client.generate_latest.

    python -m benchmarks.scrape_cost [--rounds 25] [--series 10000]

Both render the same private registry holding `--series` series (a labelled counter);
ours is measured twice: the render alone (what the endpoint runs in a worker thread)
and the whole ASGI request to /metrics. Target: ours <= 1.2x generate_latest.

Measured like the overhead harness: one pinned core, the three contenders in a shuffled
order each round, a `gc.collect()` before each sample, and the 20th percentile of the
rounds. (With a fixed order and the median of 9 rounds, the same code gave the whole
request anywhere from 19 ms less to 80 ms more than the render alone.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from amani_observability.metrics._middleware import MetricsEndpoint
from benchmarks.harness import low_quantile, publish

TARGET = 1.2
RESULTS = Path(__file__).resolve().parent / "results"


def build_registry(series: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter(
        "bench_requests_total", "Requests.", ["method", "endpoint", "status"], registry=registry
    )
    for n in range(series):
        counter.labels("GET", f"/route/{n // 10}", str(200 + n % 10)).inc(n)
    return registry


def asgi_scrape(endpoint: MetricsEndpoint) -> Callable[[], None]:
    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    loop = asyncio.new_event_loop()
    return lambda: loop.run_until_complete(endpoint(scope, receive, send))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "scrape_cost.json")
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        # One core for the process and the endpoint's worker thread alike.
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
    registry = build_registry(args.series)
    endpoint = MetricsEndpoint(registry=registry)
    assert endpoint.render()[0] == generate_latest(registry)
    contenders: dict[str, Callable[[], object]] = {
        "generate_latest": lambda: generate_latest(registry),
        "amani render": endpoint.render,
        "amani GET /metrics (ASGI)": asgi_scrape(endpoint),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    rng = random.Random(1234)
    for _ in range(args.rounds):
        order = list(contenders)
        rng.shuffle(order)
        for name in order:
            gc.collect()
            started = time.perf_counter()
            contenders[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
    lows = {name: low_quantile(values) for name, values in samples.items()}
    base = lows["generate_latest"]
    for name, ms in lows.items():
        print(f"{name:<28} {ms:8.2f} ms  {ms / base:5.2f}x", file=sys.stderr)
    ratio = lows["amani GET /metrics (ASGI)"] / base
    result = {
        "series": args.series,
        "rounds": args.rounds,
        "ms": lows,
        "ratio": round(ratio, 3),
        "target": TARGET,
        "meets_target": ratio <= TARGET,
    }
    return publish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
