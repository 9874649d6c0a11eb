"""The single stack layer records exactly what the composed middlewares record.

instrument() puts `StackMiddleware` in front of the four middlewares it composes and
sends HTTP requests through it; `stack.layered` is the composition itself. The same
requests through each must give the same responses, metric samples, spans, Sentry events
and access-log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sentry_sdk
from fastapi import BackgroundTasks, FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from amani_observability import ObservabilitySettings, instrument, tracing
from amani_observability._correlation import current_trace_ids
from amani_observability._sentry_seam import unbridge_traces
from amani_observability._stack import StackMiddleware
from tests.conftest import lifespan
from tests.sentry_stand_in import SentryStandIn
from tests.support import http_scope

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OUR_METRICS = ("http_requests", "http_request_duration_seconds", "errors")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise RuntimeError("kaboom")
        if item_id == 404:
            raise HTTPException(status_code=404, detail="no such item")
        return {"item_id": item_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"one,"
            yield b"two"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/later")
    async def later(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(asyncio.sleep, 0)
        return {"queued": True}

    return app


# (path, headers): each request names its own ID, so both runs can be compared line by line.
REQUESTS: list[tuple[str, list[tuple[str, str]]]] = [
    ("/items/1?q=a", [("X-Request-ID", "r-ok"), ("User-Agent", "t/1")]),
    ("/items/1", [("X-Request-ID", "r-traced"), ("traceparent", TRACEPARENT)]),
    ("/items/0", [("X-Request-ID", "r-fail")]),
    ("/items/404", [("X-Request-ID", "r-missing")]),
    ("/nowhere", [("X-Request-ID", "r-unmatched")]),
    ("/stream", [("X-Request-ID", "r-stream")]),
    ("/later", [("X-Request-ID", "r-later")]),
    ("/health", [("X-Request-ID", "r-excluded")]),
    ("/items/2", [("X-Request-ID", "bad id\r\n")]),
]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[Any, ...]] = []

    def emit(self, record: logging.LogRecord) -> None:
        data = record.__dict__
        self.lines.append(
            (data["request_id"] if data["request_id"].startswith("r-") else "generated",
             data["method"], data["url"], data["status_code"], "trace_id" in data)
        )  # fmt: skip


@pytest.fixture
def sentry_server() -> Iterator[SentryStandIn]:
    access_logger = logging.getLogger("amani_observability.access")
    level = access_logger.level
    access_logger.setLevel(logging.INFO)
    with SentryStandIn() as stand_in:
        yield stand_in
    access_logger.setLevel(level)
    sentry_sdk.get_global_scope().set_client(None)
    unbridge_traces(current_trace_ids)


def our_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of our request metrics, but the duration sums (they are timings)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.name in OUR_METRICS
        for sample in family.samples
        if not sample.name.endswith(("_sum", "_created"))
        and not (sample.name.endswith("_bucket") and sample.labels.get("le") != "+Inf")
    }


def comparable_span(span: Any) -> dict[str, Any]:
    attributes = dict(span.attributes or {})
    if not str(attributes.get("request.id", "")).startswith("r-"):
        attributes["request.id"] = "generated"
    return {
        "name": span.name,
        "attributes": attributes,
        "status": span.status.status_code,
        "events": [event.name for event in span.events],
        "parent": None if span.parent is None else span.parent.span_id,
        "links": [(link.context.trace_id, link.context.span_id) for link in span.links],
    }


def comparable_event(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "tags": {k: v for k, v in event["tags"].items() if k != "trace_id"},
        "has_trace_id": "trace_id" in event["tags"],
        "transaction": event["transaction"],
        "exception": [(e["type"], e["value"]) for e in event["exception"]["values"]],
        "url": event["request"]["url"],
    }


def exchange(messages: list[dict[str, Any]]) -> tuple[Any, Any]:
    """An ASGI receive (the request, then nothing until cancelled) and a recording send."""
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(dict(message))

    return receive, send


async def run(app: Any, memory: InMemorySpanExporter, sentry: SentryStandIn) -> dict[str, Any]:
    access = Records()
    access_logger = logging.getLogger("amani_observability.access")
    access_logger.addHandler(access)
    before = our_samples()
    responses = []
    try:
        for path, headers in REQUESTS:
            messages: list[dict[str, Any]] = []
            with contextlib.suppress(RuntimeError):  # re-raised for the server to log
                await app(http_scope(path, headers=headers), *exchange(messages))
            start = [m for m in messages if m["type"] == "http.response.start"]
            bodies = [m for m in messages if m["type"] == "http.response.body"]
            body = b"".join(m.get("body", b"") for m in bodies)
            headers_sent = start[0]["headers"] if start else []
            names = [name for name, _ in headers_sent]
            request_id = dict(headers_sent).get(b"x-request-id", b"").decode()
            responses.append(
                (start[0]["status"] if start else None, body,
                 request_id if request_id.startswith("r-") else bool(request_id),
                 dict(headers_sent).get(b"traceresponse", b"").decode(),
                 names[-2:])
            )  # fmt: skip
    finally:
        access_logger.removeHandler(access)
    sentry_sdk.flush(timeout=10)
    after = our_samples()
    finished = memory.get_finished_spans()
    # Each traceresponse as the position of the span it names: ids differ between runs.
    named = {traceresponse_of(span): n for n, span in enumerate(finished)}
    responses = [(*r[:3], named.get(r[3]) if r[3] else None, r[4]) for r in responses]
    spans = [comparable_span(span) for span in finished]
    memory.clear()
    events = [comparable_event(event) for event in sentry.events()]
    sentry.envelopes.clear()
    return {
        "responses": responses,
        "metrics": {key: value - before.get(key, 0.0) for key, value in after.items()},
        "spans": spans,
        "events": events,
        "access": access.lines,
    }


def traceresponse_of(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@pytest.mark.parametrize("policy", ["continue", "restart", "ignore"])
async def test_the_stack_layer_records_what_the_composed_middlewares_record(
    sentry_server: SentryStandIn, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_injected_provider", provider)
    app = make_app()
    settings = ObservabilitySettings(
        tracing_enabled=True,
        sentry_dsn=sentry_server.dsn,
        log_json=False,
        trace_context_policy=policy,
        trace_response_header=True,
    )
    instrument(app, settings)
    async with lifespan(app):
        stack = app.middleware_stack
        assert isinstance(stack, StackMiddleware)
        through_stack = await run(stack, memory, sentry_server)
        through_layers = await run(stack.layered, memory, sentry_server)

    assert through_stack == through_layers
    # ...and what they record is what it should be, not merely the same twice.
    assert [status for status, _, _, _, _ in through_stack["responses"]] == [
        200, 200, 500, 404, 404, 200, 200, 200, 200
    ]  # fmt: skip
    # Each traced response names its own server span (the excluded /health has none),
    # next to the request ID.
    assert [r[3] for r in through_stack["responses"]] == [0, 1, 2, 3, 4, 5, 6, None, 7]
    assert through_stack["responses"][0][4] == [b"traceresponse", b"x-request-id"]
    assert through_stack["responses"][5][1] == b"one,two"
    assert through_stack["responses"][8][2] is True  # the bad ID was replaced
    ok_label_set = (("endpoint", "/items/{item_id}"), ("method", "GET"), ("status", "200"))
    assert through_stack["metrics"][("http_requests_total", ok_label_set)] == 3
    assert through_stack["metrics"][
        ("errors_total", (("endpoint", "/items/{item_id}"), ("error_type", "RuntimeError")))
    ] == 1  # fmt: skip
    assert [span["name"] for span in through_stack["spans"]] == [
        "GET /items/{item_id}", "GET /items/{item_id}", "GET /items/{item_id}",
        "GET /items/{item_id}", "GET", "GET /stream", "GET /later", "GET /items/{item_id}",
    ]  # fmt: skip
    caller = (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert (through_stack["spans"][1]["parent"], through_stack["spans"][1]["links"]) == {
        "continue": (caller[1], []),
        "restart": (None, [caller]),
        "ignore": (None, []),
    }[policy]
    assert [(e["tags"]["request_id"], e["exception"]) for e in through_stack["events"]] == [
        ("r-fail", [("RuntimeError", "kaboom")])
    ]
    assert through_stack["access"][2] == ("r-fail", "GET", "/items/0", 500, True)


async def double_start_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/silent":
        return  # returns without responding
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.start", "status": 503, "headers": []})


def exchange_like_uvicorn() -> tuple[Any, Any]:
    """`exchange()`, but `send` refuses a second response start as uvicorn does."""
    messages: list[dict[str, Any]] = []
    receive, record = exchange(messages)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and messages:
            raise RuntimeError("Expected ASGI message 'http.response.body'")
        await record(message)

    return receive, send


async def test_the_first_response_start_is_recorded_and_a_missing_response_gets_the_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server refuses a second `http.response.start` (uvicorn raises RuntimeError): the
    client got the first status, so metrics, span and access line record that one. An app
    that returns without responding gets a 500 that names the request."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_injected_provider", provider)
    app = instrument(double_start_app, ObservabilitySettings(tracing_enabled=True))
    access = Records()
    access_logger = logging.getLogger("amani_observability.access")
    access_logger.addHandler(access)
    level = access_logger.level
    access_logger.setLevel(logging.INFO)
    try:
        async with lifespan(app):
            stack = app.app
            assert isinstance(stack, StackMiddleware)
            for layer in (stack, stack.layered):
                before = our_samples()
                with pytest.raises(RuntimeError):
                    await layer(
                        http_scope("/twice", headers=[("X-Request-ID", "r-twice")]),
                        *exchange_like_uvicorn(),
                    )
                silent: list[dict[str, Any]] = []
                await layer(
                    http_scope("/silent", headers=[("X-Request-ID", "r-silent")]),
                    *exchange(silent),
                )
                assert [(m["status"], dict(m["headers"])[b"x-request-id"]) for m in silent[:1]] == [
                    (500, b"r-silent")
                ]
                counted = {
                    labels: value - before.get((name, labels), 0.0)
                    for (name, labels), value in our_samples().items()
                    if name == "http_requests_total"
                }
                assert counted == {
                    (("endpoint", "<unmatched>"), ("method", "GET"), ("status", "200")): 1.0,
                    (("endpoint", "<unmatched>"), ("method", "GET"), ("status", "500")): 1.0,
                }
                twice = memory.get_finished_spans()[0]
                assert twice.attributes["http.response.status_code"] == 200
                memory.clear()
    finally:
        access_logger.removeHandler(access)
        access_logger.setLevel(level)
    assert access.lines == [
        ("r-twice", "GET", "/twice", 200, True), ("r-silent", "GET", "/silent", 500, False)
    ] * 2  # fmt: skip
