"""Tracing: provider set-up, one SERVER span per request, propagation, helpers, failures."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from amani_observability import (
    ObservabilitySettings,
    _correlation,
    instrument,
)
from amani_observability.logs import configure_logging
from amani_observability.tracing import (
    REQUEST_ID_ATTRIBUTE,
    TracingMiddleware,
    add_span_attributes,
    get_tracer,
)
from amani_observability.tracing import _provider as tracing_provider
from amani_observability.tracing._export import (
    EXPORT_FAILED,
    SHUTDOWN_ABANDON_WAIT,
    SHUTDOWN_GAVE_UP,
)
from amani_observability.tracing._hooks import FASTAPI_SPAN_SEEN
from tests.conftest import free_port, lifespan
from tests.support import OTLPReceiver, http_scope, otlp_value

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"

# Module level, before any provider exists: the guide's usage.
custom_tracer = get_tracer(__name__)


def settings(**values: Any) -> ObservabilitySettings:
    defaults: dict[str, Any] = {
        "tracing_enabled": True,
        "log_json": False,
        "metrics_enabled": False,
        "access_log_enabled": False,
    }
    return ObservabilitySettings(**{**defaults, **values})


class Boom(Exception):
    pass


def fastapi_app(tracer_provider: TracerProvider | None = None, **values: Any) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id, "user": baggage.get_baggage("user")}

    @app.get("/boom")
    async def boom() -> None:
        raise Boom("kaput")

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise HTTPException(status_code=503)

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/custom")
    async def custom() -> dict[str, str]:
        with custom_tracer.start_as_current_span("process_transaction"):
            add_span_attributes(
                transaction_id="tx-1", amount=Decimal("12.50"), user_id=None, tags=["a", "b"]
            )
            logging.getLogger("tests.custom").info("inside the custom span")
        return {"ok": "yes"}

    instrument(app, settings(**values), tracer_provider=tracer_provider)
    return app


@pytest.fixture
async def client(exporter: InMemorySpanExporter) -> AsyncIterator[httpx.AsyncClient]:
    app = fastapi_app(exporter.provider)  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def only_span(memory: InMemorySpanExporter) -> ReadableSpan:
    spans = memory.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


# --- names, attributes, status ---------------------------------------------------------------


async def test_span_is_named_by_method_and_route_template_with_stable_attributes(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        "/items/42?q=1", headers={"User-Agent": "tests/1", "X-Request-ID": "rid-1"}
    )
    assert response.status_code == 200
    span = only_span(exporter)
    assert (span.name, span.kind, span.status.status_code) == (
        "GET /items/{item_id}",
        SpanKind.SERVER,
        StatusCode.UNSET,
    )
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/items/42",
        "url.scheme": "http",
        "url.query": "q=1",
        "network.protocol.version": "1.1",
        "server.address": "t",
        "server.port": 80,
        "client.address": "127.0.0.1",
        "user_agent.original": "tests/1",
        REQUEST_ID_ATTRIBUTE: "rid-1",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "amani_observability"


async def test_unmatched_request_is_named_by_the_method_alone(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    response = await client.get("/no/such/path/123")
    assert response.status_code == 404
    span = only_span(exporter)
    assert span.name == "GET"
    assert "http.route" not in (span.attributes or {})
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET


async def test_4xx_responses_leave_the_status_unset(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    await client.get("/missing")
    await client.get("/items/not-a-number")  # FastAPI's 422
    spans = exporter.get_finished_spans()
    assert [
        (s.name, s.attributes and s.attributes["http.response.status_code"]) for s in spans
    ] == [
        ("GET /missing", 404),
        ("GET /items/{item_id}", 422),
    ]
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET, StatusCode.UNSET]
    assert all("error.type" not in (s.attributes or {}) for s in spans)


async def test_a_5xx_response_is_an_error_typed_by_its_status_code(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    response = await client.get("/unavailable")
    assert response.status_code == 503
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert (span.attributes["error.type"], span.attributes["http.response.status_code"]) == (
        "503",
        503,
    )
    assert list(span.events) == []


async def test_an_escaped_exception_is_recorded_and_reraised_unchanged(
    exporter: InMemorySpanExporter,
) -> None:
    app = fastapi_app(exporter.provider)
    raised: list[BaseException] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            raised.append(exc)
            raise

    transport = httpx.ASGITransport(app=inner, raise_app_exceptions=False)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.get("/boom")
    assert response.status_code == 500
    assert len(raised) == 1
    assert type(raised[0]) is Boom
    assert str(raised[0]) == "kaput"
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "tests.test_tracing.Boom"
    assert span.attributes["http.response.status_code"] == 500
    assert [event.name for event in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == "kaput"


async def test_an_unknown_method_is_other_with_the_original_kept(
    exporter: InMemorySpanExporter,
) -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello", hello)])
    instrument(app, settings(), tracer_provider=exporter.provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.request("PURGE", "/hello")
    assert response.status_code == 405
    span = only_span(exporter)
    assert span.name == "HTTP /hello"
    assert span.attributes is not None
    assert (
        span.attributes["http.request.method"],
        span.attributes["http.request.method_original"],
    ) == ("_OTHER", "PURGE")


async def test_a_custom_sampler_sees_the_request_attributes_at_span_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    seen: list[dict[str, Any]] = []

    class Recording(Sampler):
        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any
        ) -> SamplingResult:
            attributes = kwargs.get("attributes", args[1] if len(args) > 1 else None)
            seen.append(dict(attributes or {}))
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "recording"

    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=Recording())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app = fastapi_app(provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/items/5")
    assert seen[0]["http.request.method"] == "GET"
    assert seen[0]["url.path"] == "/items/5"
    span = only_span(memory)
    assert span.attributes is not None
    assert (span.attributes["url.path"], span.attributes["http.route"]) == (
        "/items/5",
        "/items/{item_id}",
    )


async def test_sensitive_query_values_are_redacted(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    await client.get("/items/1?X-Amz-Signature=secret&page=2")
    span = only_span(exporter)
    assert span.attributes is not None
    assert span.attributes["url.query"] == "X-Amz-Signature=[redacted]&page=2"


# --- propagation ------------------------------------------------------------------------------


async def test_an_incoming_traceparent_and_baggage_are_continued(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        "/items/7",
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=x", "baggage": "user=alice"},
    )
    assert response.json() == {"item_id": 7, "user": "alice"}
    span = only_span(exporter)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.parent.is_remote is True
    assert span.context.trace_state.to_header() == "vendor=x"


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",  # short span id
        "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
async def test_a_malformed_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient, traceparent: str
) -> None:
    response = await client.get("/items/1", headers={"traceparent": traceparent})
    assert response.status_code == 200
    span = only_span(exporter)
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != TRACE_ID
    assert span.context.trace_id != 0


async def test_outgoing_httpx_calls_carry_the_traceparent(
    exporter: InMemorySpanExporter,
) -> None:
    received: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("traceparent"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    downstream = f"http://127.0.0.1:{server.server_address[1]}/downstream"

    app = FastAPI(telemetry={"tracing": False})

    @app.get("/call")
    async def call() -> dict[str, int]:
        async with httpx.AsyncClient() as outgoing:
            answer = await outgoing.get(downstream)
        return {"status": answer.status_code}

    instrument(app, settings(), tracer_provider=exporter.provider)
    transport = httpx.ASGITransport(app=app)
    try:
        async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            response = await c.get("/call")
    finally:
        server.shutdown()
        server.server_close()
    assert response.json() == {"status": 204}
    spans = {s.kind: s for s in exporter.get_finished_spans()}
    assert set(spans) == {SpanKind.SERVER, SpanKind.CLIENT}
    server_span, client_span = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert client_span.parent is not None
    assert client_span.parent.span_id == server_span.context.span_id
    trace_id = format(server_span.context.trace_id, "032x")
    client_id = format(client_span.context.span_id, "016x")
    flags = int(client_span.context.trace_flags)
    assert flags & 1 == 1  # sampled
    assert received == [f"00-{trace_id}-{client_id}-{flags:02x}"]


async def test_httpx_instrumentation_is_switched_off_at_shutdown(
    exporter: InMemorySpanExporter,
) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    app = fastapi_app(exporter.provider)
    async with lifespan(app):
        assert HTTPXClientInstrumentor().is_instrumented_by_opentelemetry is True
    assert HTTPXClientInstrumentor().is_instrumented_by_opentelemetry is False


async def test_sqlalchemy_instrumentation_is_switched_on_or_skipped_with_one_info_line(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
    app = fastapi_app(exporter.provider)
    caplog.set_level(logging.INFO)
    async with lifespan(app):
        switched_on = instrumentor.is_instrumented_by_opentelemetry
    assert instrumentor.is_instrumented_by_opentelemetry is False  # off again after shutdown
    if conflict is None:
        assert switched_on is True
    else:  # e.g. SQLAlchemy 2.1 with instrumentation 0.66b2
        assert switched_on is False
        assert f"Not switching on SQLAlchemyInstrumentor: {conflict}" in caplog.messages
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_concurrent_requests_keep_their_own_spans(exporter: InMemorySpanExporter) -> None:
    app = fastapi_app(exporter.provider)
    transport = httpx.ASGITransport(app=app)
    trace_ids = [f"{index + 1:032x}" for index in range(40)]
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        responses = await asyncio.wait_for(
            asyncio.gather(
                *(
                    c.get(
                        f"/items/{index}", headers={"traceparent": f"00-{tid}-{PARENT_SPAN_ID}-01"}
                    )
                    for index, tid in enumerate(trace_ids)
                )
            ),
            30,
        )
    assert [r.status_code for r in responses] == [200] * 40
    paths = {
        format(s.context.trace_id, "032x"): (s.attributes or {})["url.path"]
        for s in exporter.get_finished_spans()
    }
    assert paths == {tid: f"/items/{index}" for index, tid in enumerate(trace_ids)}


# --- excluded paths, websockets, one span only -----------------------------------------------


async def test_excluded_paths_get_no_span(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 404
    assert exporter.get_finished_spans() == ()


async def test_excluded_paths_come_from_settings(exporter: InMemorySpanExporter) -> None:
    app = fastapi_app(exporter.provider, tracing_excluded_paths="/items/.*")
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/items/1")
        await c.get("/health")
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /health"]


async def test_the_default_exclusion_follows_the_metrics_path(
    exporter: InMemorySpanExporter,
) -> None:
    app = fastapi_app(exporter.provider, metrics_path="/internal/metrics")
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/internal/metrics")
        await c.get("/metrics")  # an ordinary (unmatched) path now
    assert [(s.attributes or {})["url.path"] for s in exporter.get_finished_spans()] == ["/metrics"]


async def test_a_websocket_connection_is_one_span(exporter: InMemorySpanExporter) -> None:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(text)
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws/{room}", echo)])
    instrument(app, settings(), tracer_provider=exporter.provider)
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("/ws/lobby", type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    async with lifespan(app):
        await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    span = only_span(exporter)
    assert span.name == "GET /ws/{room}"
    assert span.attributes is not None
    assert (
        span.attributes["url.scheme"],
        span.attributes["http.route"],
        span.attributes["http.response.status_code"],
    ) == ("ws", "/ws/{room}", 101)
    assert span.status.status_code is StatusCode.UNSET


async def test_a_websocket_client_leaving_normally_is_not_an_error(
    exporter: InMemorySpanExporter,
) -> None:
    from starlette.websockets import WebSocketDisconnect

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the client leaves instead: WebSocketDisconnect

    app = Starlette(routes=[WebSocketRoute("/chat", chat)])
    instrument(app, settings(), tracer_provider=exporter.provider)
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1001}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = http_scope("/chat", type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    async with lifespan(app):
        with pytest.raises(WebSocketDisconnect):
            await app(scope, receive, send)
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in (span.attributes or {})
    assert list(span.events) == []


async def test_fastapi_native_telemetry_adds_no_second_server_span() -> None:
    """With a global provider set by the service, FastAPI's own span stays off."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)  # what FastAPI's native telemetry looks for

    app = fastapi_app()
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/items/1")
        await c.get("/items/2")
    spans = memory.get_finished_spans()
    assert [
        (s.name, s.kind, s.instrumentation_scope and s.instrumentation_scope.name) for s in spans
    ] == [
        ("GET /items/{item_id}", SpanKind.SERVER, "amani_observability"),
        ("GET /items/{item_id}", SpanKind.SERVER, "amani_observability"),
    ]


@pytest.mark.skipif(
    "telemetry" not in inspect.signature(FastAPI.__init__).parameters,
    reason="this FastAPI opens no server span of its own (native telemetry is newer)",
)
async def test_fastapis_own_server_span_replaces_ours_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app built with FastAPI's tracing on: its span, none of ours, one warning."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app = FastAPI(telemetry={"tracer_provider": provider, "operation_spans": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    instrument(app, settings(), tracer_provider=provider)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.WARNING, "amani_observability"):
        async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/items/1")).status_code == 200
            assert (await c.get("/items/2")).status_code == 200
    assert [
        (s.instrumentation_scope and s.instrumentation_scope.name, s.name, s.kind)
        for s in memory.get_finished_spans()
    ] == [("fastapi", "GET /items/{item_id}", SpanKind.SERVER)] * 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        FASTAPI_SPAN_SEEN
    ]


async def test_a_mounted_fastapi_app_opens_no_span_of_its_own() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)

    sub = FastAPI()  # its own tracing on: the scope key we set keeps it from opening a span

    @sub.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    app = FastAPI(telemetry={"tracing": False})
    app.mount("/v2", sub)
    instrument(app, settings(tracing_excluded_paths="/v2/users/0"))
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/v2/users/5")).json() == {"user_id": 5}
        assert (await c.get("/v2/users/0")).json() == {"user_id": 0}  # excluded: no span
    assert [s.name for s in memory.get_finished_spans()] == ["GET /v2/users/{user_id}"]


# --- helpers and correlation ------------------------------------------------------------------


async def test_custom_spans_are_children_with_cleaned_attributes_and_logs_correlate(
    exporter: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    await client.get("/custom")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"process_transaction", "GET /custom"}
    child, server = spans["process_transaction"], spans["GET /custom"]
    assert child.parent is not None
    assert child.parent.span_id == server.context.span_id
    assert dict(child.attributes or {}) == {
        "transaction_id": "tx-1",
        "amount": "12.50",
        "tags": ("a", "b"),
    }
    line = next(
        json.loads(raw) for raw in stream.getvalue().splitlines() if "inside the custom" in raw
    )
    assert (line["trace_id"], line["span_id"]) == (
        format(child.context.trace_id, "032x"),
        format(child.context.span_id, "016x"),
    )


async def test_inner_layers_see_the_server_spans_ids_through_the_seam(
    exporter: InMemorySpanExporter,
) -> None:
    """What the metrics layer (innermost) reads for exemplars is the request's span."""
    seen: list[tuple[str, str] | None] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        seen.append(_correlation.current_trace_ids())
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/pay", endpoint)])
    instrument(app, settings(), tracer_provider=exporter.provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/pay", headers={"traceparent": TRACEPARENT})
    span = only_span(exporter)
    assert seen == [(TRACE_ID, format(span.context.span_id, "016x"))]


def test_add_span_attributes_outside_a_span_does_nothing() -> None:
    add_span_attributes(anything="at all")  # no span, no error
    assert trace.get_current_span().is_recording() is False


async def test_the_correlation_getter_lives_from_startup_to_shutdown(
    exporter: InMemorySpanExporter,
) -> None:
    app = fastapi_app(exporter.provider)
    tracer = trace.get_tracer("probe", tracer_provider=exporter.provider)
    assert _correlation._getter is _correlation._no_trace
    async with lifespan(app):
        with tracer.start_as_current_span("probe") as span:
            ids = _correlation.current_trace_ids()
        assert ids == (
            format(span.get_span_context().trace_id, "032x"),
            format(span.get_span_context().span_id, "016x"),
        )
        assert _correlation.current_trace_ids() is None  # no current span
    assert _correlation._getter is _correlation._no_trace


async def test_unsampled_spans_give_no_trace_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    app = fastapi_app(provider)
    async with lifespan(app):
        with get_tracer("probe").start_as_current_span("not sampled"):
            assert _correlation.current_trace_ids() is None


async def test_requests_before_startup_pass_through_untraced(
    exporter: InMemorySpanExporter,
) -> None:
    app = fastapi_app(exporter.provider)
    transport = httpx.ASGITransport(app=app)  # no lifespan: tracing never started
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/items/3")).status_code == 200
    assert exporter.get_finished_spans() == ()


# --- provider set-up ---------------------------------------------------------------------------


async def test_the_provider_is_built_at_startup_registered_and_shut_down() -> None:
    app = fastapi_app(
        tracing_exporter="none",
        service_name="payments",
        service_version="1.2.3",
        environment="staging",
    )
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    async with lifespan(app):
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        attributes = dict(provider.resource.attributes)
        instance_id = str(attributes.pop("service.instance.id"))
        assert {k: attributes[k] for k in attributes if not k.startswith("telemetry.")} == {
            "service.name": "payments",
            "service.version": "1.2.3",
            "deployment.environment.name": "staging",
        }
        assert len(instance_id) == 36
        assert provider.sampler.get_description() == (
            "ParentBased{root:TraceIdRatioBased{1.0},remoteParentSampled:AlwaysOnSampler,"
            "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
            "localParentNotSampled:AlwaysOffSampler}"
        )
    assert provider._active_span_processor._span_processors == ()
    assert tracing_provider.retired == [provider]


async def test_a_provider_the_service_set_is_used_not_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    app = fastapi_app()
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.INFO, logger="amani_observability.tracing"):
        async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            await c.get("/items/1")
    assert trace.get_tracer_provider() is provider
    assert [s.name for s in memory.get_finished_spans()] == ["GET /items/{item_id}"]
    assert tracing_provider.USING_EXISTING_PROVIDER in caplog.messages
    # Not ours to shut down: it still records.
    with provider.get_tracer("after").start_as_current_span("after"):
        pass
    assert len(memory.get_finished_spans()) == 2


async def test_the_sample_rate_applies_to_new_traces_but_a_sampled_caller_wins() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor as Simple

    app = fastapi_app(tracing_exporter="none", tracing_sample_rate=0.0)
    memory = InMemorySpanExporter()
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        provider.add_span_processor(Simple(memory))
        await c.get("/items/1")
        await c.get("/items/2", headers={"traceparent": TRACEPARENT})
    assert [format(s.context.trace_id, "032x") for s in memory.get_finished_spans()] == [TRACE_ID]


def test_tracing_disabled_imports_nothing_and_adds_no_layer() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from amani_observability import ObservabilitySettings, instrument\n"
        "from starlette.applications import Starlette\n"
        "instrument(Starlette(), ObservabilitySettings(log_json=False, metrics_enabled=False))\n"
        "print('amani_observability.tracing' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# --- export: real OTLP receiver, failure isolation ------------------------------------------


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


async def test_spans_reach_a_real_otlp_grpc_receiver(otlp_receiver: OTLPReceiver) -> None:
    receiver = otlp_receiver
    app = fastapi_app(
        tracing_exporter="otlp",
        otlp_endpoint=receiver.endpoint,
        otlp_headers="x-team=blue%20team,Authorization=Bearer%20abc",
        service_name="escrow",
    )
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/items/9", headers={"traceparent": TRACEPARENT})
        await c.get("/nowhere")
    # Shutdown flushed the batch processor: everything has arrived.
    resource_spans = receiver.resource_spans()
    resource = {a.key: otlp_value(a.value) for a in resource_spans[0].resource.attributes}
    assert (resource["service.name"], resource["deployment.environment.name"]) == (
        "escrow",
        "development",
    )
    spans = receiver.spans()
    assert [s.name for s in spans] == ["GET /items/{item_id}", "GET"]
    first = spans[0]
    assert (first.trace_id.hex(), first.parent_span_id.hex()) == (TRACE_ID, PARENT_SPAN_ID)
    assert first.kind == 2  # SPAN_KIND_SERVER
    attributes = {a.key: otlp_value(a.value) for a in first.attributes}
    assert (attributes["http.route"], attributes["http.response.status_code"]) == (
        "/items/{item_id}",
        200,
    )
    assert spans[1].parent_span_id == b""
    assert receiver.metadata[0]["x-team"] == "blue team"
    assert receiver.metadata[0]["authorization"] == "Bearer abc"


async def test_spans_reach_a_real_otlp_http_receiver() -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    received: list[tuple[str, dict[str, str], bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app = fastapi_app(
            tracing_exporter="otlp-http",
            otlp_endpoint=f"http://127.0.0.1:{server.server_address[1]}",  # no path
            otlp_headers="dd-api-key=k%2B1",
        )
        transport = httpx.ASGITransport(app=app)
        async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            await c.get("/items/4")
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1
    path, headers, body = received[0]
    assert (path, headers["dd-api-key"], headers["content-type"]) == (
        "/v1/traces",
        "k+1",
        "application/x-protobuf",
    )
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["GET /items/{item_id}"]


def test_the_console_exporter_writes_spans_as_json() -> None:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    provider, guard = tracing_provider.build_provider(settings(tracing_exporter="console"))
    assert guard is not None
    assert isinstance(guard.exporter, ConsoleSpanExporter)
    assert guard.target == "the console"
    guard.exporter.out = output = io.StringIO()  # standard output by default
    with provider.get_tracer("probe").start_as_current_span("printed"):
        pass
    provider.shutdown()
    assert json.loads(output.getvalue())["name"] == "printed"


async def test_a_dead_collector_costs_the_requests_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests succeed quickly, nothing raises, and failures are logged once per interval."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export (and fail) often
    # Each failing export retries (1 s, then 2 s) for about 3 s on the batch thread.
    monkeypatch.setattr(tracing_provider, "EXPORT_TIMEOUT", 5.0)
    app = fastapi_app(tracing_exporter="otlp", otlp_endpoint=f"http://127.0.0.1:{free_port()}")
    transport = httpx.ASGITransport(app=app)
    durations: list[float] = []
    caplog.set_level(logging.WARNING)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        # Three seconds of requests while the exporter retries (1 s, 2 s) on its thread.
        deadline = time.monotonic() + 3.0
        for index in range(2000):  # bounded in count and in time
            if time.monotonic() > deadline:
                break
            began = time.perf_counter()
            response = await c.get(f"/items/{index}")
            durations.append(time.perf_counter() - began)
            assert response.status_code == 200
            await asyncio.sleep(0.005)
        stopping = time.monotonic()
    shutdown_took = time.monotonic() - stopping
    assert len(durations) >= 50
    # The exporter spent the whole time retrying against the closed port: had a request
    # waited for it even once, it would have taken a second at least.
    assert max(durations) < 0.8, max(durations)
    failures = [(r.name, r.msg) for r in caplog.records if r.levelno >= logging.WARNING]
    if _exporter_shutdown_interrupts_retries():
        # The collector was known to be down: shutdown gave up on it at once.
        assert shutdown_took < SHUTDOWN_ABANDON_WAIT, shutdown_took
        assert failures == [("amani_observability.tracing", EXPORT_FAILED)]
    else:
        # An exporter that finishes its retries first: shutdown waits a bounded time.
        assert shutdown_took < SHUTDOWN_ABANDON_WAIT + 0.5, shutdown_took
        # Whether the first export's failure is reported before it depends on timing.
        assert ("amani_observability.tracing", SHUTDOWN_GAVE_UP) in failures
        assert {message for _, message in failures} <= {EXPORT_FAILED, SHUTDOWN_GAVE_UP}


def _exporter_shutdown_interrupts_retries() -> bool:
    """Whether this OTLP exporter's shutdown() cuts its retry back-off short (1.3x on)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        return hasattr(exporter, "_shutdown_in_progress")
    finally:
        exporter.shutdown()


async def test_a_configured_attribute_length_limit_still_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast way of setting attributes steps aside when the SDK must truncate values."""
    from opentelemetry.sdk.trace import SpanLimits

    memory = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attribute_length=6))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app = fastapi_app(provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/items/123456789", headers={"User-Agent": "a-long-agent/1.0"})
    attributes = dict(only_span(memory).attributes or {})
    assert attributes["url.path"] == "/items"
    assert attributes["user_agent.original"] == "a-long"
    assert attributes["http.route"] == "/items"
    assert attributes["http.response.status_code"] == 200


async def test_a_service_provider_is_used_for_spans_and_helpers_and_left_alone() -> None:
    """instrument(tracer_provider=...): the server span and get_tracer() go to it; it is
    not made global and is still working after the app shut down."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app = FastAPI(telemetry={"tracing": False})
    helper_tracer = get_tracer("payments")

    @app.get("/pay/{payment_id}")
    async def pay(payment_id: int) -> dict[str, int]:
        with helper_tracer.start_as_current_span("charge"):
            return {"payment_id": payment_id}

    instrument(app, settings(), tracer_provider=provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/pay/7")).status_code == 200
        assert type(trace.get_tracer_provider()) is trace.ProxyTracerProvider
    spans = memory.get_finished_spans()
    assert [
        (s.name, s.kind, s.instrumentation_scope and s.instrumentation_scope.name) for s in spans
    ] == [
        ("charge", SpanKind.INTERNAL, "payments"),
        ("GET /pay/{payment_id}", SpanKind.SERVER, "amani_observability"),
    ]
    parent = spans[0].parent
    assert (parent.span_id if parent else None) == spans[1].context.span_id
    # Never shut down by the library: the service's provider still records.
    with provider.get_tracer("after").start_as_current_span("later"):
        pass
    assert [s.name for s in memory.get_finished_spans()][-1] == "later"


async def test_tracing_middleware_alone_traces_with_its_own_lifespan() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello/{who}", hello)])
    app.add_middleware(TracingMiddleware, settings=settings(), tracer_provider=provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/hello/ada")).text == "hello"
    assert [
        (s.name, s.attributes and s.attributes["http.route"]) for s in memory.get_finished_spans()
    ] == [("GET /hello/{who}", "/hello/{who}")]
