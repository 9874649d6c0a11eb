"""Whole-stack rows: everything instrument() does against the four peers stacked.

Ours: request ID + metrics + tracing (100 % sampling, BatchSpanProcessor, dropping
exporter) + Sentry errors-only, in one instrument() call. The peers: asgi-correlation-id
+ prometheus-fastapi-instrumentator + opentelemetry-instrumentation-fastapi (same kind of
provider) + sentry-sdk's default FastAPI integration (traces_sample_rate=0).

Each side runs in its own process (sentry-sdk patches Starlette process-wide) with its
own bare baseline; the ratio compares overheads. As in cases_sentry.py, the peers'
Sentry client is current only while their app runs, which errs in their favour.

The public-API floor is the same per-request work written straight against the SDKs'
public APIs in one raw ASGI wrapper: a uuid4 request ID on the response header, one
Sentry isolation scope, one server span with the attributes ours sets, a labelled
Counter and Histogram. It runs in our process, interleaved with ours, through the same
tracer provider and Sentry client.
"""

from __future__ import annotations

from typing import Any

from benchmarks.cases_sentry import DSN, ENVIRONMENT, RELEASE, with_sentry_sdk_client
from benchmarks.cases_tracing import provider
from benchmarks.harness import Case, bare_app

PEERS = "+ peer stack (ACI + PFI + OTel + sentry-sdk)"
FLOOR = "public-API floor (same work, one wrapper)"
OURS = "+ amani full stack"


def instrument_fully(app: Any, *, access_log: bool = False) -> Any:
    """`app` under the whole stack, as the row measures it."""
    from amani_observability import ObservabilitySettings, instrument

    settings = ObservabilitySettings(
        tracing_enabled=True,
        sentry_dsn=DSN,
        environment=ENVIRONMENT,
        service_version=RELEASE,
        log_json=False,
        access_log_enabled=access_log,
    )
    return instrument(app, settings, tracer_provider=provider())


def _ours(*, access_log: bool) -> Any:
    return instrument_fully(bare_app(), access_log=access_log)


def ours() -> Any:
    # The peers write no access log (uvicorn's would be there for both): leave ours out.
    return _ours(access_log=False)


def ours_with_access_log() -> Any:
    import logging

    # What a default instrument() does besides: one access-log record per request. The
    # record is created and filtered; no handler is attached, so nothing is written.
    logging.getLogger("amani_observability.access").setLevel(logging.INFO)
    return _ours(access_log=True)


def peers(*, registry: Any = None, tracer_provider: Any = None) -> Any:
    """The bare app under the peer stack; the tests pass their own registry and provider."""
    from asgi_correlation_id import CorrelationIdMiddleware
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    app = bare_app()
    app.add_middleware(CorrelationIdMiddleware)
    Instrumentator(registry=CollectorRegistry() if registry is None else registry).instrument(app)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider() if tracer_provider is None else tracer_provider
    )
    return with_sentry_sdk_client(app)


def public_api_floor(app: Any = None, *, registry: Any = None, tracer_provider: Any = None) -> Any:
    """The whole stack's per-request work done directly through the public APIs around
    `app` (the bare app by default); the tests pass their own registry and provider."""
    import time
    import uuid

    import sentry_sdk
    from opentelemetry.trace import SpanKind
    from prometheus_client import CollectorRegistry, Counter, Histogram

    app = bare_app() if app is None else app
    registry = CollectorRegistry() if registry is None else registry
    requests_total = Counter(
        "http_requests_total", "HTTP requests.", ["method", "endpoint", "status"],
        registry=registry,
    )  # fmt: skip
    duration = Histogram(
        "http_request_duration_seconds", "HTTP request duration.", ["method", "endpoint"],
        registry=registry,
    )  # fmt: skip
    tracer = (provider() if tracer_provider is None else tracer_provider).get_tracer("bench.floor")

    async def floor(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id_header = (b"x-request-id", uuid.uuid4().hex.encode())
        status = 500

        async def send_with_request_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), request_id_header]
                message = {**message, "headers": headers}
            await send(message)

        headers = dict(scope["headers"])
        server_host, server_port = scope["server"]
        method = scope["method"]
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope["scheme"],
            "network.protocol.version": scope["http_version"],
            "server.address": headers.get(b"host", server_host.encode()).decode(),
            "client.address": scope["client"][0],
            "user_agent.original": headers.get(b"user-agent", b"").decode(),
        }
        if server_port is not None:
            attributes["server.port"] = server_port
        with (
            sentry_sdk.isolation_scope(),
            tracer.start_as_current_span(
                method, kind=SpanKind.SERVER, attributes=attributes
            ) as span,
        ):
            await app(scope, receive, send_with_request_id)
            route = scope["route"].path
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
        requests_total.labels(method, route, str(status)).inc()
        duration.labels(method, route).observe(time.perf_counter() - started)

    return floor


CASES = [
    Case(PEERS, peers, group="stack-peers"),
    Case(OURS, ours, group="stack", peer=PEERS, target=0.12),
    Case(FLOOR, public_api_floor, group="stack"),
    Case(f"{OURS} (vs floor)", ours, group="stack", peer=FLOOR, target=0.8),
    # What the default access log adds on top; the peers write none, so no target.
    Case(f"{OURS} + access log", ours_with_access_log, group="stack", peer=PEERS),
]
