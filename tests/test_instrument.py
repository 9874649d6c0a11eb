"""instrument(): one call, fixed order, idempotence guard, lifespan hooks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amani_observability import ConfigurationError, ObservabilitySettings, instrument
from amani_observability._lifecycle import Lifecycle, LifespanMiddleware
from tests.conftest import lifespan
from tests.support import LifespanDriver, call_asgi, http_scope, response_headers

SETTINGS = ObservabilitySettings(log_json=False, metrics_enabled=False)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def test_starlette_and_fastapi_apps_are_changed_in_place() -> None:
    for app in (Starlette(), FastAPI(telemetry={"tracing": False})):
        assert instrument(app, SETTINGS) is app


def test_a_second_call_on_the_same_app_is_refused() -> None:
    app = Starlette()
    instrument(app, SETTINGS)
    with pytest.raises(ConfigurationError, match="already called on this app"):
        instrument(app, SETTINGS)


def test_a_second_call_on_a_wrapped_bare_app_is_refused() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        return None

    wrapped = instrument(bare, SETTINGS)
    with pytest.raises(ConfigurationError, match="already called on this app"):
        instrument(wrapped, SETTINGS)


def test_settings_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="takes an ObservabilitySettings, not dict"):
        instrument(Starlette(), {"log_json": False})  # type: ignore[arg-type]


def test_something_that_is_not_an_app_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs an ASGI app, not int"):
        instrument(42, SETTINGS)


async def test_instrumenting_an_app_that_already_serves_does_not_crash() -> None:
    app = Starlette(routes=[Route("/", hello)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/")  # builds the middleware stack
        instrument(app, SETTINGS)
        response = await client.get("/", headers={"X-Request-ID": "late-1"})
    assert response.headers["x-request-id"] == "late-1"


async def test_middleware_added_after_instrument_still_works() -> None:
    from starlette.middleware.gzip import GZipMiddleware

    app = Starlette(routes=[Route("/", hello)])
    instrument(app, SETTINGS)
    app.add_middleware(GZipMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/", headers={"X-Request-ID": "gz-1"})
    assert (response.text, response.headers["x-request-id"]) == ("hello", "gz-1")


async def test_a_bare_asgi_app_is_wrapped() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = instrument(bare, SETTINGS)
    messages = await call_asgi(wrapped, http_scope(headers=[("X-Request-ID", "bare-1")]))
    assert response_headers(messages)["x-request-id"] == "bare-1"


async def test_starlette_lifespan_runs_our_hooks_around_the_apps() -> None:
    events: list[str] = []

    async def app_lifespan(app: Any) -> Any:
        events.append("app start")
        yield
        events.append("app stop")

    from contextlib import asynccontextmanager

    app = Starlette(lifespan=asynccontextmanager(app_lifespan))
    instrument(app, SETTINGS)
    # Reach into the lifecycle instrument() created to register probes.
    lifecycle = _find_lifecycle(app)
    lifecycle.on_startup(lambda: events.append("ours start"))

    async def ours_stop() -> None:
        events.append("ours stop")

    lifecycle.on_shutdown(ours_stop)
    async with lifespan(app):
        events.append("serving")
    assert events == ["ours start", "app start", "serving", "app stop", "ours stop"]


def _find_lifecycle(app: Any) -> Lifecycle:
    lifespan_context = app.router.lifespan_context
    for cell in lifespan_context.__wrapped__.__closure__ or ():
        if isinstance(cell.cell_contents, Lifecycle):
            return cell.cell_contents
    raise AssertionError("no lifecycle found")


async def test_bare_apps_without_lifespan_support_still_get_hooks() -> None:
    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"

    events: list[str] = []
    lifecycle = Lifecycle()
    lifecycle.on_startup(lambda: events.append("start"))

    async def stop() -> None:
        events.append("stop")

    lifecycle.on_shutdown(stop)
    driver = LifespanDriver(LifespanMiddleware(no_lifespan, lifecycle))
    await driver.startup()
    await driver.shutdown()
    assert events == ["start", "stop"]


async def test_a_failing_shutdown_hook_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []
    lifecycle = Lifecycle()

    async def good() -> None:
        events.append("good")

    async def bad() -> None:
        raise OSError("collector gone")

    lifecycle.on_shutdown(good)
    lifecycle.on_shutdown(bad)
    lifecycle.start()
    await lifecycle.stop()
    assert events == ["good"]
    assert "observability shutdown hook" in caplog.text
