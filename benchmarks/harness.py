"""The overhead harness: call ASGI apps directly (no network), interleaved, medians.

A `Case` builds one app. Cases are grouped: each group runs in its own Python process
with its own bare FastAPI baseline, because some peers patch libraries process-wide
(sentry-sdk's integrations patch Starlette on init) and would tax every other case.
Within a process the cases run interleaved, round after round, so drift on a noisy
machine hits them all alike; we report a low quantile of many short samples (see
`low_quantile`) and compare overheads as ratios.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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

    app = FastAPI(telemetry={"tracing": False})

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


class _Lifespan:
    """Drive an app's lifespan as a server would: tracer providers start and stop there."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.get_running_loop().create_task(
            self.app(scope, self.inbox.get, self.outbox.put)
        )
        await self.inbox.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(self.outbox.get(), 10)
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan start-up failed: {message}")

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(self.outbox.get(), 15)
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)


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
    lifespans = [_Lifespan(app) for app in apps.values()]
    for lifespan in lifespans:
        await lifespan.start()
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    rng = random.Random(1234)
    for _ in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        for case in order:
            gc.collect()
            samples[case.name].append(await _time(apps[case.name], case, requests))
    for lifespan in lifespans:
        await lifespan.stop()
    return {name: low_quantile(values) for name, values in samples.items()}


def low_quantile(values: list[float]) -> float:
    """The 20th percentile: interference on a shared machine only ever adds time, so a low
    quantile of many short samples tracks the true cost better than the median."""
    ordered = sorted(values)
    return ordered[len(ordered) // 5]


def publish(result: dict[str, Any], out: Path) -> int:
    """Print a benchmark's result as one JSON line, keep it in `out`, and return the exit
    status: 0 when it meets its target."""
    print(json.dumps(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if result["meets_target"] else 1
