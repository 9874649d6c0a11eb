"""A kept-alive connection does not keep the last request's Sentry scopes and span context.

uvicorn arms a connection's keep-alive timer while it sends the final body, and the
timer's handle keeps a copy of the context. These tests serve the app with a real
uvicorn on a loopback port, keep the connection open after a response, and check that
the request's isolation scope and OpenTelemetry context were freed all the same, and
that a background task still ran with the request's scope.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, copy_context
from typing import Any

import httpx
import pytest
import sentry_sdk
import uvicorn
from fastapi import BackgroundTasks, FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from amani_observability import ObservabilitySettings, instrument
from amani_observability._keepalive import awaited_in, is_final_body
from tests.conftest import free_port
from tests.sentry_stand_in import SentryStandIn


def pinning_app(seen: dict[str, Any], *, sentry_on: bool, tracing_on: bool) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/later")
    async def later(tasks: BackgroundTasks) -> dict[str, bool]:
        # Only what we set: without Sentry, asking for the isolation scope would make
        # the SDK set one of its own in this context.
        scope = sentry_sdk.get_isolation_scope() if sentry_on else None
        scope_id = id(scope)  # no reference to it from the task: that would keep it alive
        span = trace.get_current_span()
        span_id = id(span)
        if scope is not None:
            # Scopes take no weak reference: follow the request's event processor, which
            # only its isolation scope holds.
            seen["scope"] = weakref.ref(scope._event_processors[-1])
        if tracing_on:
            seen["context"] = weakref.ref(otel_context.get_current())
        seen["sampled"] = span.get_span_context().trace_flags.sampled

        async def background() -> None:
            # Runs after the final body was sent: the request's own values are back.
            # (Async: a worker thread would keep the scopes of the request that started
            # it, through sentry-sdk's threading integration.)
            if sentry_on:
                seen["background scope"] = id(sentry_sdk.get_isolation_scope()) == scope_id
            seen["background span"] = id(trace.get_current_span()) == span_id

        tasks.add_task(background)
        return {"queued": True}

    return app


async def serve_and_request(app: Any, seen: dict[str, Any]) -> dict[str, Any]:
    """One request over a connection kept open; what was still alive while it was open."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, access_log=False, log_config=None, log_level=None
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # at most 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/later")
            assert (response.status_code, response.json()) == (200, {"queued": True})
            for _ in range(100):  # the background task, at most 1 s
                if "background span" in seen:
                    break
                await asyncio.sleep(0.01)
            watched = [seen[name] for name in ("scope", "context") if name in seen]
            for _ in range(100):  # until the request's task is done and released, at most 2 s
                await asyncio.sleep(0.02)
                gc.collect()
                if all(ref() is None for ref in watched):
                    break
            # The connection is still open here: its keep-alive timer is armed.
            assert len(server.server_state.connections) == 1
            alive = {
                name: seen[name]() is not None for name in ("scope", "context") if name in seen
            }
            return {
                **alive,
                **{
                    name: seen[name]
                    for name in ("background scope", "background span", "sampled")
                    if name in seen
                },
            }
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


@pytest.mark.parametrize(
    ("request_ids", "metrics", "tracing_on", "sentry_on", "layer"),
    [
        (True, True, True, True, ["request_id", "tracing", "sentry", "metrics"]),
        (False, False, False, True, ["sentry"]),
        (False, False, True, False, ["tracing"]),
    ],
    ids=["whole stack", "Sentry alone", "tracing alone"],
)
async def test_the_connections_keep_alive_timer_holds_none_of_the_request(
    sentry_server: SentryStandIn,
    monkeypatch: pytest.MonkeyPatch,
    request_ids: bool,
    metrics: bool,
    tracing_on: bool,
    sentry_on: bool,
    layer: list[str],
) -> None:
    seen: dict[str, Any] = {}
    app = pinning_app(seen, sentry_on=sentry_on, tracing_on=tracing_on)
    settings = ObservabilitySettings(
        request_id_enabled=request_ids,
        metrics_enabled=metrics,
        tracing_enabled=tracing_on,
        sentry_dsn=sentry_server.dsn if sentry_on else None,
        log_json=False,
        access_log_enabled=False,
    )
    instrument(app, settings, tracer_provider=TracerProvider())

    result = await serve_and_request(app, seen)

    assert [hooks.name for hooks in app.middleware_stack.hooks] == layer
    expected: dict[str, bool] = {"background span": True, "sampled": tracing_on}
    if sentry_on:
        expected |= {"scope": False, "background scope": True}  # freed; back for the task
    if tracing_on:
        expected["context"] = False
    assert result == expected


def test_awaited_in_runs_every_step_in_the_given_context() -> None:
    request_var: ContextVar[str] = ContextVar("request_var", default="unset")

    async def server_send(message: str) -> str:
        # A send that waits on the event loop twice (as uvicorn's does when the
        # transport is paused), reading the variable at each step.
        seen = [request_var.get()]
        await asyncio.sleep(0)
        seen.append(request_var.get())
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        seen.append(request_var.get())
        return f"{message}: {seen}"

    async def failing_send() -> None:
        await asyncio.sleep(0)
        raise OSError("client gone")

    async def request() -> list[Any]:
        outside = copy_context()
        request_var.set("request")
        sent = await awaited_in(outside, server_send("body"))
        with pytest.raises(OSError, match="client gone"):
            await awaited_in(outside, failing_send())
        # A future, not a coroutine, is awaited too.
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, 7)
        from_future = await awaited_in(outside, future)
        return [sent, from_future, request_var.get()]

    assert asyncio.run(request()) == ["body: ['unset', 'unset', 'unset']", 7, "request"]


def test_awaited_in_passes_cancellation_to_the_awaitable() -> None:
    cleaned_up: list[str] = []

    async def hanging_send() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.append("send")

    assert asyncio.run(outcome_when_cancelled(hanging_send)) == "cancelled"
    assert cleaned_up == ["send"]


async def outcome_when_cancelled(awaitable: Callable[[], Awaitable[Any]]) -> str:
    """Await `awaitable()` through awaited_in() in a task, cancel the task once it waits."""
    task = asyncio.ensure_future(awaited_in(copy_context(), awaitable()))
    await asyncio.sleep(0)
    task.cancel()
    try:
        await asyncio.wait_for(task, timeout=5)
    except asyncio.CancelledError:
        return "cancelled"
    return "not cancelled"


@pytest.mark.parametrize(
    ("message", "final"),
    [
        ({"type": "http.response.body", "body": b"x"}, True),
        ({"type": "http.response.body", "body": b"x", "more_body": False}, True),
        ({"type": "http.response.body", "body": b"x", "more_body": True}, False),
        ({"type": "http.response.pathsend", "path": "/tmp/f"}, True),
        ({"type": "http.response.start", "status": 200, "headers": []}, False),
    ],
)
def test_is_final_body(message: dict[str, Any], final: bool) -> None:
    assert is_final_body(message) is final


class _PlainAwaitable:
    """An awaitable whose iterator has neither throw() nor close(), as `await` allows."""

    def __init__(self, future: asyncio.Future[int]) -> None:
        self.future = future

    def __await__(self) -> Any:
        return iter([self.future])


def test_awaited_in_raises_cancellation_where_the_awaitable_cannot_take_it() -> None:
    def plain() -> _PlainAwaitable:
        return _PlainAwaitable(asyncio.get_running_loop().create_future())

    assert asyncio.run(outcome_when_cancelled(plain)) == "cancelled"
