"""The event-loop monitor and stall watchdog under a real uvicorn, on asyncio's loop and
on uvloop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from amani_observability._loop_monitor import STALL_WARNING
from tests.conftest import free_port
from tests.support import UvicornProcess

pytestmark = pytest.mark.integration

LOOPS = {"asyncio": "asyncio", "uvloop": "uvloop"}
INTERVAL = 0.25
ENV = {
    "LOOP_MONITOR_INTERVAL_SECONDS": str(INTERVAL),
    "LOOP_STALL_SECONDS": "0.5",
    "LOG_LEVEL": "INFO",
}
STALL_PREFIX = STALL_WARNING.split("%", 1)[0]


def samples(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("event_loop_")
    }


def stall_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["message"].startswith(STALL_PREFIX):
                lines.append(entry)
    return lines


def serve(loop: str, tmp_path: Path) -> UvicornProcess:
    return UvicornProcess(
        "tests.integration.loop_app:app",
        free_port(),
        env=ENV,
        args=("--loop", loop),
        log_path=tmp_path / "uvicorn.log",
    )


def bucket(found: dict[Any, float], le: str) -> float:
    return found[("event_loop_lag_seconds_bucket", (("le", le),))]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_blocking_route_is_one_stall_naming_route_request_and_frame(
    loop: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with serve(loop, tmp_path) as server:
        assert httpx.get(server.base_url + "/health").json() == {"loop": loop}
        response = httpx.get(
            server.base_url + "/blocking", headers={"X-Request-ID": "stall-1"}, timeout=10
        )
        found = samples(server.base_url)
        elapsed = time.monotonic() - started
    assert response.json() == {"status": "done"}

    [warning] = stall_lines(server.output())
    assert warning["level"] == "WARNING"
    assert warning["logger"] == "amani_observability.loop"
    assert (warning["request_id"], warning["route"]) == ("stall-1", "GET /blocking")
    assert 0.5 <= warning["stalled_seconds"] <= 1.0
    assert "serving request stall-1 (GET /blocking)" in warning["message"]
    # The innermost frame shown is the blocking call in the route.
    assert warning["message"].endswith(
        ", in blocking_route\n"
        "    time.sleep(1.0)  # noqa: ASYNC251 - the point: a synchronous call blocks the loop"
    )

    assert found[("event_loop_stalls_total", ())] == 1.0
    count = found[("event_loop_lag_seconds_count", ())]
    # One beat per interval at most while the server ran; the blocked one among them.
    assert 1 <= count <= elapsed / INTERVAL
    # The blocked beat ran between 0.75 s (due just before the sleep began, a quarter
    # second at most) and a little over 1 s late: the one observation above 0.5 s.
    assert bucket(found, "2.5") - bucket(found, "0.5") == 1.0


@pytest.mark.parametrize("loop", LOOPS)
def test_a_busy_app_without_blocking_calls_logs_no_stall(loop: str, tmp_path: Path) -> None:
    with serve(loop, tmp_path) as server:

        async def load() -> list[int]:
            # 400 requests, 20 at a time, bounded by the client's timeout.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
                limit = asyncio.Semaphore(20)

                async def one(i: int) -> int:
                    async with limit:
                        return (await client.get(f"/items/{i}")).status_code

                return await asyncio.gather(*(one(i) for i in range(400)))

        statuses = asyncio.run(load())
        time.sleep(2 * INTERVAL)  # a beat or two after the load
        found = samples(server.base_url)
    assert statuses == [200] * 400
    assert stall_lines(server.output()) == []
    assert found[("event_loop_stalls_total", ())] == 0.0
    assert found[("event_loop_lag_seconds_count", ())] >= 2
