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
from collections.abc import Iterator
from contextvars import Context, ContextVar
from typing import Any

import httpx
import pytest
import sentry_sdk
import uvicorn
from fastapi import BackgroundTasks, FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sentry_sdk.scope import remove_external_propagation_context

from amani_observability import ObservabilitySettings, instrument, tracing
from amani_observability._keepalive import is_final_body, step_back, step_out
from amani_observability._stack import StackMiddleware
from amani_observability.sentry import SentryMiddleware
from amani_observability.tracing import TracingMiddleware
from tests.conftest import free_port
from tests.sentry_stand_in import SentryStandIn


@pytest.fixture
def sentry_server() -> Iterator[SentryStandIn]:
    with SentryStandIn() as stand_in:
        yield stand_in
    sentry_sdk.get_global_scope().set_client(None)
    remove_external_propagation_context()


def pinning_app(seen: dict[str, Any], *, sentry_on: bool, tracing_on: bool) -> FastAPI:
    app = FastAPI()

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
        (True, True, True, True, StackMiddleware),
        (False, False, False, True, SentryMiddleware),
        (False, False, True, False, TracingMiddleware),
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
    layer: type,
) -> None:
    monkeypatch.setattr(tracing, "_injected_provider", TracerProvider())
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
    instrument(app, settings)

    result = await serve_and_request(app, seen)

    assert type(app.middleware_stack) is layer
    expected: dict[str, bool] = {"background span": True, "sampled": tracing_on}
    if sentry_on:
        expected |= {"scope": False, "background scope": True}  # freed; back for the task
    if tracing_on:
        expected["context"] = False
    assert result == expected


def test_step_out_gives_each_variable_its_value_from_before_the_request() -> None:
    def scenario() -> list[Any]:
        with_default: ContextVar[str] = ContextVar("with_default", default="default")
        without_default: ContextVar[str] = ContextVar("without_default")
        set_before: ContextVar[str] = ContextVar("set_before")
        set_before.set("outer")
        tokens = [
            with_default.set("request"),
            without_default.set("request"),
            set_before.set("request"),
            object(),  # not a ContextVar token: left alone
        ]
        outside = step_out(tokens)
        during = [with_default.get(), without_default.get(), set_before.get()]
        step_back(outside)
        after = [with_default.get(), without_default.get(), set_before.get()]
        return [during, after, len(outside)]

    # An unset variable without a default cannot be unset again: it keeps its value.
    assert Context().run(scenario) == [
        ["default", "request", "outer"],
        ["request", "request", "request"],
        2,
    ]


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
