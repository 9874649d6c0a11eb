"""Tracing rows: our server span against opentelemetry-instrumentation-fastapi, and the floor.

Every case here records every request (100 % sampling) through one SDK TracerProvider
with a BatchSpanProcessor and an exporter that drops the batches, so only the
per-request cost is compared. The provider is never made global: FastAPI's native
telemetry switches itself on when a global provider exists and would then put its own
span on the bare baseline too. The group runs in its own process, since the batch
processor's worker thread shares the interpreter with every case beside it. The peer
stays in the same process, interleaved with ours and the floor: on a noisy machine that
beats a quieter process of its own (its three spans per request do tax the garbage
collector for whichever case runs next, ours and the floor alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from benchmarks.harness import Case, bare_app

GROUP = "tracing"
THEIRS = "+ opentelemetry-instrumentation-fastapi"
FLOOR = "SDK floor: one span, 6 attributes"
OURS = "+ amani tracing"


@cache
def provider() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DroppingExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider(
        resource=Resource.create({"service.name": "bench"}), shutdown_on_exit=False
    )
    tracer_provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    return tracer_provider


def ours() -> Any:
    from amani_observability import ObservabilitySettings, instrument

    # Tracing alone: request IDs, access log and metrics off, as the peer has none.
    settings = ObservabilitySettings(
        tracing_enabled=True,
        log_json=False,
        metrics_enabled=False,
        request_id_enabled=False,
        access_log_enabled=False,
    )
    # This provider, not registered: OpenTelemetry's global stays alone.
    return instrument(bare_app(), settings, tracer_provider=provider())


def theirs() -> Any:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = bare_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider())
    return app


def floor() -> Any:
    """The least any tracing middleware can cost: one span started, given 6 attributes
    and ended through the same provider, nothing else (no context, no propagation)."""
    from opentelemetry.trace import SpanKind

    app = bare_app()
    tracer = provider().get_tracer("floor")
    server = SpanKind.SERVER

    async def one_span(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        span = tracer.start_span(
            "GET",
            kind=server,
            attributes={
                "http.request.method": "GET",
                "url.path": scope["path"],
                "url.scheme": "http",
                "server.address": "bench",
                "server.port": 80,
                "client.address": "127.0.0.1",
            },
        )
        await app(scope, receive, send)
        span.end()

    return one_span


CASES = [
    Case(THEIRS, theirs, group=GROUP),
    Case(FLOOR, floor, group=GROUP),
    # For information: issue 21's targets are the whole stack's.
    Case(OURS, ours, group=GROUP, peer=THEIRS, target=None),
    Case(f"{OURS} (vs floor)", ours, group=GROUP, peer=FLOOR, target=None),
]
