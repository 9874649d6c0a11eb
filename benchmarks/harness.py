"""The overhead harness: call ASGI apps directly (no network), interleaved, medians.

A `Case` builds one app. Cases are grouped: each group runs in its own Python process
with its own bare FastAPI baseline, because some peers patch libraries process-wide
(sentry-sdk's integrations patch Starlette on init) and would tax every other case.
Within a process the cases run interleaved, round after round, so drift on a noisy
machine hits them all alike; we report medians and compare overheads as ratios.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BARE = "bare FastAPI"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]  # returns an ASGI app serving GET /items/{item_id}
    group: str = "main"
    # The case this one is compared with, and the most we allow of its overhead.
    peer: str | None = None
    target: float | None = None
    path: str = "/items/42"
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())


def bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


BARE_CASE = Case(BARE, bare_app)


def _scope(case: Case) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": case.path,
        "raw_path": case.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1"), *case.headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


async def _start(app: Any) -> None:
    """Run the app's lifespan start-up, as a server would (tracer providers start there)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    done = asyncio.Event()

    async def send(message: Any) -> None:
        if message["type"].startswith("lifespan.startup"):
            done.set()

    asyncio.get_running_loop().create_task(app({"type": "lifespan", "state": {}}, queue.get, send))
    await asyncio.wait_for(done.wait(), 10)


async def _time(app: Any, case: Case, requests: int) -> float:
    template = _scope(case)
    status: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(dict(template, state={}), _receive, send)  # warm, and check it answers
    if status != [200]:
        raise RuntimeError(f"{case.name}: expected 200, got {status}")
    started = time.perf_counter()
    for _ in range(requests):
        await app(dict(template, state={}), _receive, _send)
    return (time.perf_counter() - started) / requests * 1e6


async def measure(cases: list[Case], *, rounds: int, requests: int) -> dict[str, float]:
    """Median microseconds per request of each case, interleaved over `rounds`."""
    apps = {case.name: case.build() for case in cases}
    for app in apps.values():
        await _start(app)
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    rng = random.Random(1234)
    for _ in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        for case in order:
            gc.collect()
            samples[case.name].append(await _time(apps[case.name], case, requests))
    return {name: statistics.median(values) for name, values in samples.items()}
