"""One pipeline records what the same hooks record when nested one per layer.

instrument() runs every concern that is on as hooks of one Pipeline; each concern's
standalone middleware is a Pipeline with its one hook. For every subset of the five
concerns, the same requests through one Pipeline and through nested single-hook Pipelines
(in instrument()'s order) must give the same responses, metric samples, exported spans
(whole `to_json()`), Sentry events (whole) and access lines. A hook that raises switches
off its own concern for that request, never the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
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

from amani_observability import ObservabilitySettings, instrument
from amani_observability._access_log import AccessLog, AccessLogHooks
from amani_observability._correlation import current_trace_ids, request_id_var
from amani_observability._lifecycle import Lifecycle
from amani_observability._losses import DROPPED_METRIC
from amani_observability._pipeline import HOOK_FAILED, Pipeline, RequestHooks
from amani_observability._request_ids import RequestIDHooks
from amani_observability.metrics._concern import metrics_hooks
from amani_observability.sentry import init_sentry
from amani_observability.sentry._core import SentryHooks
from amani_observability.sentry._sentry_seam import unbridge_traces
from amani_observability.tracing._hooks import tracing_hooks
from tests.conftest import lifespan
from tests.sentry_stand_in import SentryStandIn
from tests.support import http_scope

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OUR_METRICS = ("http_requests", "http_request_duration_seconds", "errors")
CONCERNS = ("request_id", "access_log", "tracing", "sentry", "metrics")  # instrument()'s order
SUBSETS = [
    subset
    for size in range(1, len(CONCERNS) + 1)
    for subset in itertools.combinations(CONCERNS, size)
]


def make_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

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


# (path, headers): each request names its own ID, so both runs compare line by line.
REQUESTS: list[tuple[str, list[tuple[str, str]]]] = [
    ("/items/1?q=a&token=s3cret", [("X-Request-ID", "r-ok"), ("User-Agent", "t/1")]),
    ("/items/1", [("X-Request-ID", "r-traced"), ("traceparent", TRACEPARENT)]),
    ("/items/0", [("X-Request-ID", "r-fail")]),
    ("/items/404", [("X-Request-ID", "r-missing")]),
    ("/nowhere", [("X-Request-ID", "r-unmatched")]),
    ("/stream", [("X-Request-ID", "r-stream")]),
    ("/later", [("X-Request-ID", "r-later")]),
    ("/health", [("X-Request-ID", "r-excluded")]),
    ("/metrics", [("X-Request-ID", "r-scrape")]),
]


# What the requests add to the counters when metrics are on (the scrape is not counted).
_ITEM = "('endpoint', '/items/{item_id}'), ('method', 'GET')"
EXPECTED_COUNTS = {
    "errors_total(('endpoint', '/items/{item_id}'), ('error_type', 'RuntimeError'))": 1.0,
    "http_requests_total(('endpoint', '/health'), ('method', 'GET'), ('status', '200'))": 1.0,
    f"http_requests_total({_ITEM}, ('status', '200'))": 2.0,
    f"http_requests_total({_ITEM}, ('status', '404'))": 1.0,
    f"http_requests_total({_ITEM}, ('status', '500'))": 1.0,
    "http_requests_total(('endpoint', '/later'), ('method', 'GET'), ('status', '200'))": 1.0,
    "http_requests_total(('endpoint', '/stream'), ('method', 'GET'), ('status', '200'))": 1.0,
    "http_requests_total(('endpoint', '<unmatched>'), ('method', 'GET'), ('status', '404'))": 1.0,
}


class Records(logging.Handler):
    """Every access-log record's fields, but its duration (a timing)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = ("request_id", "method", "url", "status_code", "client", "trace_id", "span_id")
        self.lines.append({name: getattr(record, name, None) for name in fields})


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
    """Every sample of our request metrics (public collect()), but timings."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.name in OUR_METRICS
        for sample in family.samples
        if not sample.name.endswith(("_sum", "_created"))
        and not (sample.name.endswith("_bucket") and sample.labels.get("le") != "+Inf")
    }


def messages_for(messages: list[dict[str, Any]]) -> tuple[Any, Any]:
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


# What differs between two runs of the same requests and says nothing about the pipeline.
_TIMES = frozenset(
    {"start_time", "end_time", "timestamp", "start_timestamp", "received", "sent_at"}
)
_HEX_ID = re.compile(r"(?<![0-9a-z])(?:0x)?(?:[0-9a-f]{32}|[0-9a-f]{16})(?![0-9a-f])")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_OUR_FRAME = re.compile(r'  File "[^"]*/amani_observability/[^"]*", line \d+, in \w+\n    .*\n')


def _normalised(value: Any) -> Any:
    """`value` without times, object addresses and our own frames (nesting adds frames)."""
    if isinstance(value, dict):
        return {
            key: "<time>" if key in _TIMES else _normalised(item)
            for key, item in value.items()
            if key not in ("duration_ms",)
        }
    if isinstance(value, list):
        return [
            _normalised(item)
            for item in value
            if not (
                isinstance(item, dict)
                and str(item.get("module", "")).startswith("amani_observability.")
            )
        ]
    if isinstance(value, str):
        return _OUR_FRAME.sub("", _ADDRESS.sub(" at 0x?", value))
    return value


def _body(path: str, body: bytes) -> str:
    """The body; a scrape's only as "an exposition" (its values change between runs)."""
    if path == "/metrics" and body.startswith(b"# HELP"):
        return "<exposition>"
    return body.decode("latin-1")


def _headers(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The headers; a scrape's length as "a length" (the exposition changes between runs)."""
    return [
        (k.decode(), "<length>" if path == "/metrics" and k == b"content-length" else v.decode())
        for k, v in headers
    ]


def _ids_by_order(text: str) -> str:
    """Trace, span and event ids as the order they first appear in: ids differ per run."""
    seen: dict[str, str] = {}

    def name(match: re.Match[str]) -> str:
        return seen.setdefault(match.group(0), f"<id{len(seen)}>")

    return _HEX_ID.sub(name, text)


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
                await app(http_scope(path, headers=headers), *messages_for(messages))
            responses.append(
                [
                    {**m, "body": _body(path, m.get("body", b""))}
                    if m["type"] == "http.response.body"
                    else {**m, "headers": _headers(path, m["headers"])}
                    for m in messages
                ]
            )
    finally:
        access_logger.removeHandler(access)
    sentry_sdk.flush(timeout=10)
    after = our_samples()
    spans = [json.loads(span.to_json()) for span in memory.get_finished_spans()]
    memory.clear()
    events = sentry.events()
    sentry.envelopes.clear()
    recorded = {
        "responses": responses,
        "metrics": {
            f"{name}{labels}": value - before.get((name, labels), 0.0)
            for (name, labels), value in after.items()
            if value != before.get((name, labels), 0.0)
        },
        "spans": spans,
        "events": events,
        "access": access.lines,
    }
    return json.loads(_ids_by_order(json.dumps(_normalised(recorded), sort_keys=True)))


def build_hooks(
    concerns: tuple[str, ...], provider: TracerProvider, sentry_dsn: str, lifecycle: Lifecycle
) -> list[RequestHooks]:
    settings = ObservabilitySettings(
        tracing_enabled=True, sentry_dsn=sentry_dsn, log_json=False, trace_response_header=True
    )
    made: dict[str, RequestHooks] = {
        "request_id": RequestIDHooks(),
        "access_log": AccessLogHooks(AccessLog(excluded_paths=["/health"])),
        "tracing": tracing_hooks(settings, lifecycle, provider),
        "sentry": SentryHooks(),
        "metrics": metrics_hooks(settings, lifecycle),
    }
    init_sentry(settings)
    return [made[name] for name in concerns]


def nested(app: Any, hooks: list[RequestHooks]) -> Any:
    for hook in reversed(hooks):  # innermost first
        app = Pipeline(app, [hook])
    return app


@pytest.mark.parametrize("concerns", SUBSETS, ids=["+".join(s) for s in SUBSETS])
async def test_one_pipeline_records_what_nested_single_hook_pipelines_record(
    sentry_server: SentryStandIn, concerns: tuple[str, ...]
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    lifecycle = Lifecycle()
    hooks = build_hooks(concerns, provider, sentry_server.dsn, lifecycle)
    app = make_app()
    app.middleware_stack = app.build_middleware_stack()
    lifecycle.start()
    try:
        one = await run(Pipeline(app, hooks), memory, sentry_server)
        layered = await run(nested(app, hooks), memory, sentry_server)
    finally:
        await lifecycle.stop()

    assert one == layered
    # ...and what they record is what each concern should record, not merely the same twice.
    assert [r[0]["status"] for r in one["responses"]] == [200, 200, 500, 404, 404, 200, 200, 200,
        200 if "metrics" in concerns else 404]  # fmt: skip
    assert len(one["spans"]) == (7 if "tracing" in concerns else 0)  # not /health, /metrics
    assert len(one["events"]) == (1 if "sentry" in concerns else 0)  # only the RuntimeError
    assert len(one["access"]) == (8 if "access_log" in concerns else 0)
    counted = {key: value for key, value in one["metrics"].items() if "_total(" in key}
    assert counted == (EXPECTED_COUNTS if "metrics" in concerns else {})
    if "request_id" in concerns:
        assert [dict(r[0]["headers"])["x-request-id"] for r in one["responses"]] == [
            "r-ok", "r-traced", "r-fail", "r-missing", "r-unmatched", "r-stream", "r-later",
            "r-excluded", "r-scrape",
        ]  # fmt: skip
    if "tracing" in concerns and "request_id" in concerns:
        # Each response: the span's traceresponse first, then the request ID.
        assert [name for name, _ in one["responses"][0][0]["headers"]][-2:] == [
            "traceresponse",
            "x-request-id",
        ]
    if "access_log" in concerns:
        assert one["access"][0]["url"] == "/items/1?q=a&token=[redacted]"
        assert one["access"][2]["status_code"] == 500
        assert (one["access"][2]["request_id"] == "r-fail") == ("request_id" in concerns)
        assert (one["access"][2]["trace_id"] is not None) == ("tracing" in concerns)


async def test_the_stack_instrument_builds_is_one_pipeline_of_the_concerns_in_order(
    sentry_server: SentryStandIn,
) -> None:
    app = make_app()
    settings = ObservabilitySettings(
        tracing_enabled=True, sentry_dsn=sentry_server.dsn, log_json=False
    )
    instrument(app, settings, tracer_provider=TracerProvider())
    async with lifespan(app):
        stack = app.middleware_stack
        assert type(stack) is Pipeline
        assert [hooks.name for hooks in stack.hooks] == [
            "request_id", "access_log", "tracing", "sentry", "metrics"
        ]  # fmt: skip


class Failing(RequestHooks):
    """A concern that raises in one phase."""

    name = "failing"

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.finished = 0

    def _maybe_fail(self, phase: str) -> None:
        if phase == self.phase:
            raise ValueError(f"broken in {phase}")

    def start(self, exchange: Any) -> object:
        self._maybe_fail("start")
        return self

    def response_started(self, exchange: Any, state: Any, message: Any) -> None:
        message["headers"] = [*message.get("headers", ()), (b"x-failing", b"1")]
        self._maybe_fail("response_started")

    def response_finished(self, exchange: Any, state: Any) -> None:
        self._maybe_fail("response_finished")

    def failed(self, exchange: Any, state: Any, error: Exception) -> None:
        self._maybe_fail("failed")

    def finish(self, exchange: Any, state: Any) -> None:
        self.finished += 1
        self._maybe_fail("finish")


def dropped(pipeline: str) -> float:
    value = REGISTRY.get_sample_value(
        DROPPED_METRIC, {"pipeline": pipeline, "reason": "hook_failed"}
    )
    return value or 0.0


@pytest.mark.parametrize(
    "phase", ["start", "response_started", "response_finished", "failed", "finish"]
)
async def test_a_failing_hook_switches_off_its_concern_not_the_response(
    phase: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    failing = Failing(phase)
    # The failing concern between request ID and metrics: both still do their work.
    measured = metrics_hooks(ObservabilitySettings(log_json=False), Lifecycle())
    pipeline = Pipeline(app, [RequestIDHooks(), failing, measured])
    before_samples = our_samples()
    before_dropped = dropped("failing")
    statuses = []
    with caplog.at_level(logging.WARNING, "amani_observability"):
        for path in ("/items/1", "/items/0", "/items/2"):
            messages: list[dict[str, Any]] = []
            with contextlib.suppress(RuntimeError):
                await pipeline(
                    http_scope(path, headers=[("X-Request-ID", "r-1")]), *messages_for(messages)
                )
            start = messages[0]
            statuses.append((start["status"], dict(start["headers"])[b"x-request-id"]))
            assert request_id_var.get() is None  # released, whatever failed
    assert statuses == [(200, b"r-1"), (500, b"r-1"), (200, b"r-1")]
    counted = {
        labels: value - before_samples.get((name, labels), 0.0)
        for (name, labels), value in our_samples().items()
        if name == "http_requests_total" and value != before_samples.get((name, labels), 0.0)
    }
    assert counted == {
        (("endpoint", "/items/{item_id}"), ("method", "GET"), ("status", "200")): 2.0,
        (("endpoint", "/items/{item_id}"), ("method", "GET"), ("status", "500")): 1.0,
    }
    # Every request fails in "start", "response_started", "response_finished" and
    # "finish"; only the one that raised reaches "failed".
    failures = 1 if phase == "failed" else 3
    assert dropped("failing") - before_dropped == failures
    # finish() runs for every request the hook started, to release what it holds.
    assert failing.finished == (0 if phase == "start" else 3)
    # One line, however often it failed within the interval.
    assert [r.getMessage() for r in caplog.records if r.name == "amani_observability"] == [
        HOOK_FAILED % ("failing", phase, "failing", 1)
    ]
