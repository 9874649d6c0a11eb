"""Steady memory: a long run of the full stack must not grow RSS or the series count.

    python -m benchmarks.memory [--requests 1000000] [--warmup 100000] [--max-seconds 900]

The full stack of cases_stack.py (request ID, metrics, tracing at 100 % through a batch
processor, Sentry errors-only) is called in-process, as the harness does. Half the
requests go to the one real route (GET /items/<random id>, sometimes with an incoming
request ID), half to random unknown paths with a random method (the nine standard ones,
a few extensions and made-up ones) and a random Host header: what a scanner sends.

After the warm-up, RSS and the number of series must stay put: every label value is
bounded by construction (route templates, "<unmatched>", "_OTHER"), and nothing may be
kept per request. Targets: RSS grows by less than 5 MB after the warm-up, and the series
count of every metric in the registry is the same at every checkpoint.

Every run is bounded by --requests and by --max-seconds; a run cut short by the time
guard says so and fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MAX_GROWTH_BYTES = 5 * 1024 * 1024
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
EXTENSION_METHODS = ("PURGE", "PROPFIND", "MKCOL", "LOCK", "BREW", "get")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SEGMENTS = ("wp-admin", "admin", ".env", "api", "v1", "login", "phpmyadmin", "static", "x")
CATALOGUE = (
    "http_requests",
    "http_request_duration_seconds",
    "http_requests_in_progress",
    "errors",
    "db_connections_active",
    "db_query_duration_seconds",
    "escrow_transactions",
    "user_registrations",
    "kyc_submissions",
    "alerts_sent",
)


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def series_counts() -> dict[str, int]:
    """Samples per metric family in the default registry (`_created` samples included)."""
    from prometheus_client import REGISTRY

    return {family.name: len(family.samples) for family in REGISTRY.collect()}


def our_series(counts: dict[str, int]) -> int:
    return sum(n for name, n in counts.items() if name in CATALOGUE)


def requests_total_series() -> set[tuple[str, str, str]]:
    """The label sets of http_requests_total (method, endpoint, status)."""
    from prometheus_client import REGISTRY

    return {
        (s.labels["method"], s.labels["endpoint"], s.labels["status"])
        for family in REGISTRY.collect()
        if family.name == "http_requests"
        for s in family.samples
        if s.name == "http_requests_total"
    }


def _method(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.7:
        return rng.choice(KNOWN_METHODS)
    if draw < 0.85:
        return rng.choice(EXTENSION_METHODS)
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 10)))


def scopes(rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless mix: even requests hit the route, odd ones an unknown path."""
    known = True
    while True:
        if known:
            method = "GET"
            path = f"/items/{rng.randrange(1_000_000)}"
            headers = [(b"host", b"bench"), (b"user-agent", b"bench/1")]
            if rng.random() < 0.25:
                headers.append((b"x-request-id", f"{rng.getrandbits(64):016x}".encode()))
        else:
            method = _method(rng)
            path = f"/{rng.choice(_SEGMENTS)}/{rng.getrandbits(48):x}"
            host = f"h{rng.randrange(1_000_000)}.example:{rng.randrange(1, 65536)}"
            headers = [(b"host", host.encode()), (b"user-agent", b"scanner/0.1")]
        known = not known
        yield {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def drive(
    app: Any, requests: Iterator[dict[str, Any]], count: int, deadline: float
) -> tuple[int, Counter[int]]:
    """Send `count` requests one after another (or fewer, at the deadline)."""
    statuses: Counter[int] = Counter()
    status = 0

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    for done in range(count):
        if done % 1000 == 0 and time.monotonic() > deadline:
            return done, statuses
        status = 0
        await app(next(requests), _receive, send)
        statuses[status] += 1
    return count, statuses


def _checkpoint(done: int, started: float) -> dict[str, Any]:
    gc.collect()
    counts = series_counts()
    return {
        "requests": done,
        "seconds": round(time.monotonic() - started, 1),
        "rss_bytes": rss_bytes(),
        "our_series": our_series(counts),
        "all_series": sum(counts.values()),
    }


async def run(
    app: Any, *, requests: int, warmup: int, checkpoints: int, max_seconds: float, seed: int = 1
) -> dict[str, Any]:
    """Warm up, then send `requests` more, checking RSS and series at `checkpoints` points."""
    from benchmarks.harness import _Lifespan

    rng = random.Random(seed)
    stream = scopes(rng)
    started = time.monotonic()
    deadline = started + max_seconds
    lifespan = _Lifespan(app)
    await lifespan.start()
    statuses: Counter[int] = Counter()
    try:
        done, seen = await drive(app, stream, warmup, deadline)
        statuses.update(seen)
        baseline = _checkpoint(0, started)
        baseline_series = series_counts()
        labels_after_warmup = requests_total_series()
        points = [baseline]
        measured = 0
        step = max(1, requests // checkpoints)
        while measured < requests and time.monotonic() < deadline:
            done, seen = await drive(app, stream, min(step, requests - measured), deadline)
            statuses.update(seen)
            measured += done
            points.append(_checkpoint(measured, started))
        final_series = series_counts()
        labels_at_end = requests_total_series()
    finally:
        await lifespan.stop()

    growth = [p["rss_bytes"] - baseline["rss_bytes"] for p in points]
    changed = sorted(
        name
        for name in final_series.keys() | baseline_series.keys()
        if final_series.get(name) != baseline_series.get(name)
    )
    complete = measured == requests
    series_constant = (
        not changed
        and len({p["all_series"] for p in points}) == 1
        and labels_at_end == labels_after_warmup
    )
    return {
        "requests_after_warmup": measured,
        "requests_asked": requests,
        "warmup_requests": warmup,
        "complete": complete,
        "seconds": round(time.monotonic() - started, 1),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "rss_after_warmup_bytes": baseline["rss_bytes"],
        "rss_growth_bytes": growth[-1],
        "rss_peak_growth_bytes": max(growth),
        "max_growth_bytes": MAX_GROWTH_BYTES,
        "our_series": baseline["our_series"],
        "http_requests_total_series": len(labels_at_end),
        "http_requests_total_labels": sorted(labels_at_end),
        "all_series": baseline["all_series"],
        "families_whose_series_changed": changed,
        "series_constant": series_constant,
        "meets_target": complete and series_constant and max(growth) < MAX_GROWTH_BYTES,
        "checkpoints": points,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument(
        "--warmup", type=int, help="requests before the baseline (default: 10 %%, >= 20,000)"
    )
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(20_000, args.requests // 10)

    from benchmarks.cases_stack import ours

    result = asyncio.run(
        run(
            ours(),
            requests=args.requests,
            warmup=warmup,
            checkpoints=args.checkpoints,
            max_seconds=args.max_seconds,
        )
    )
    mib = 1024 * 1024
    print(f"{'requests':>10} {'seconds':>8} {'RSS MiB':>8} {'growth MiB':>11} {'series':>7}")
    for point in result["checkpoints"]:
        grown = (point["rss_bytes"] - result["rss_after_warmup_bytes"]) / mib
        print(
            f"{point['requests']:>10} {point['seconds']:>8.1f} {point['rss_bytes'] / mib:>8.1f} "
            f"{grown:>11.2f} {point['all_series']:>7}"
        )
    print(
        f"\n{result['requests_after_warmup']:,} requests after {warmup:,} of warm-up "
        f"(statuses {result['statuses']}): RSS grew {result['rss_growth_bytes'] / mib:.2f} MiB "
        f"(peak {result['rss_peak_growth_bytes'] / mib:.2f} MiB, target < 5 MiB); "
        f"series {'constant' if result['series_constant'] else 'CHANGED'} "
        f"({result['http_requests_total_series']} of http_requests_total, "
        f"{result['our_series']} samples of our metrics, {result['all_series']} in the registry)"
    )
    if not result["complete"]:
        print(f"stopped by --max-seconds {args.max_seconds:g}: run incomplete", file=sys.stderr)
    print("ok" if result["meets_target"] else "MISSED")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
