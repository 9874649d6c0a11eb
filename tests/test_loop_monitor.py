"""LoopMonitor: lag observations, one stall per blocked stretch, the request it served."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amani_observability import ObservabilitySettings, _loop_monitor, instrument
from amani_observability._loop_monitor import STALLS_NOT_LOGGED, LoopMonitor
from tests.conftest import lifespan

WATCHDOG = "amani-observability-loop-watchdog"


class Recorded:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self.stalls = 0

    def observe(self, lag: float) -> None:
        self.lags.append(lag)

    def count(self) -> None:
        self.stalls += 1


def monitor_for(recorded: Recorded, interval: float = 0.02, stall: float = 0.1) -> LoopMonitor:
    return LoopMonitor(interval, stall, observe_lag=recorded.observe, count_stall=recorded.count)


def watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WATCHDOG]


def stall_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "amani_observability.loop"]


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # the frame the warning must show


async def test_a_blocked_loop_is_one_stall_with_its_blocking_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = Recorded()
    monitor = monitor_for(recorded)
    monitor.start()
    try:
        await asyncio.sleep(0.1)
        block_the_loop(0.4)
        await asyncio.sleep(0.05)
    finally:
        await monitor.stop()
    assert recorded.stalls == 1
    [record] = stall_records(caplog)
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert "serving no request" in message
    assert message.endswith(
        "in block_the_loop\n    time.sleep(seconds)  # the frame the warning must show"
    )
    assert (record.request_id, record.route) == (None, None)  # type: ignore[attr-defined]
    # The blocked beat ran late by most of the block; the others on time, or nearly.
    assert len([lag for lag in recorded.lags if lag >= 0.3]) == 1
    assert all(lag >= 0.0 for lag in recorded.lags)
    assert watchdogs() == []


async def test_only_one_stall_per_window_is_logged_and_the_rest_are_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = Recorded()
    monitor = monitor_for(recorded)
    monitor.start()
    try:
        block_the_loop(0.3)
        await asyncio.sleep(0.05)
        block_the_loop(0.3)
        await asyncio.sleep(0.05)
        assert (recorded.stalls, len(stall_records(caplog))) == (2, 1)
        monkeypatch.setattr(_loop_monitor, "STALL_LOG_INTERVAL", 0.0)
        block_the_loop(0.3)
        await asyncio.sleep(0.05)
    finally:
        await monitor.stop()
    assert recorded.stalls == 3
    first, third = stall_records(caplog)
    assert third.getMessage().endswith(STALLS_NOT_LOGGED % 1)
    assert not first.getMessage().endswith(STALLS_NOT_LOGGED % 0)


async def test_a_stall_names_the_request_and_route_it_was_serving(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow(request: Request) -> PlainTextResponse:
        block_the_loop(0.4)
        return PlainTextResponse("done")

    async def fast(request: Request) -> PlainTextResponse:
        return PlainTextResponse("warm")

    # The first request may import code lazily, a stall of its own: log every stall.
    monkeypatch.setattr(_loop_monitor, "STALL_LOG_INTERVAL", 0.0)
    app = instrument(
        Starlette(routes=[Route("/orders/{order_id}", slow), Route("/warm", fast)]),
        ObservabilitySettings(
            log_json=False, loop_monitor_interval_seconds=0.02, loop_stall_seconds=0.1
        ),
    )
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.get("/warm", headers={"X-Request-ID": "warm-up"})
            # In-process requests never wait on I/O: let the loop run its beat between them.
            await asyncio.sleep(0.05)
            response = await client.get("/orders/7", headers={"X-Request-ID": "order-7"})
    assert response.text == "done"
    [record] = [r for r in stall_records(caplog) if r.request_id == "order-7"]  # type: ignore[attr-defined]
    assert record.route == "GET /orders/{order_id}"  # type: ignore[attr-defined]
    message = record.getMessage()
    assert "serving request order-7 (GET /orders/{order_id})" in message
    assert message.endswith(
        "in block_the_loop\n    time.sleep(seconds)  # the frame the warning must show"
    )


async def test_an_interval_of_zero_starts_neither_callback_nor_thread() -> None:
    app = instrument(
        Starlette(),
        ObservabilitySettings(log_json=False, loop_monitor_interval_seconds=0),
    )
    async with lifespan(app):
        assert watchdogs() == []


async def test_a_stall_threshold_of_zero_measures_lag_without_a_watchdog() -> None:
    recorded = Recorded()
    monitor = monitor_for(recorded, stall=0)
    monitor.start()
    try:
        assert watchdogs() == []
        await asyncio.sleep(0.1)
    finally:
        await monitor.stop()
    assert 1 <= len(recorded.lags) <= 5  # 0.1 s at one beat per 0.02 s at most


def test_start_outside_a_running_loop_logs_and_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "amani_observability.loop")
    monitor_for(Recorded()).start()
    assert [r.getMessage() for r in stall_records(caplog)] == [_loop_monitor.NOT_STARTED]
    assert watchdogs() == []
