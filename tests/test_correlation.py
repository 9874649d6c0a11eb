"""End to end: the server span's IDs reach metrics exemplars, Sentry and the logs."""

from __future__ import annotations

import io
import json
import logging
import re

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from amani_observability import ObservabilitySettings, configure_logging, instrument
from tests.conftest import lifespan

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture(params=[ALWAYS_ON], ids=["sampled"])
def spans(request: pytest.FixtureRequest) -> InMemorySpanExporter:
    """A service-provided TracerProvider recording finished spans in memory."""

    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=request.param)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    memory.provider = provider  # type: ignore[attr-defined]
    return memory


def make_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})
    log = logging.getLogger("app.correlation")

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        log.info("reading item")
        return {"item_id": item_id}

    return app


async def test_duration_exemplar_and_log_lines_carry_the_server_spans_ids(
    spans: InMemorySpanExporter,
) -> None:
    app = instrument(
        make_app(),
        ObservabilitySettings(tracing_enabled=True, tracing_exporter="none"),
        tracer_provider=spans.provider,  # type: ignore[attr-defined]
    )
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/items/3")).status_code == 200
        scrape = await client.get("/metrics", headers={"Accept": OPENMETRICS})

    [span] = spans.get_finished_spans()
    assert span.name == "GET /items/{item_id}"
    assert span.context is not None
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")

    # The one bucket line holding the observation carries the exemplar.
    exemplars = re.findall(
        r'^http_request_duration_seconds_bucket\{endpoint="/items/\{item_id\}",le="([^"]+)",'
        r'method="GET"\} 1\.0 # \{span_id="([0-9a-f]{16})",trace_id="([0-9a-f]{32})"\}',
        scrape.text,
        flags=re.M,
    )
    assert [(s, t) for _, s, t in exemplars] == [(span_id, trace_id)]

    entries = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    [line] = [e for e in entries if e["logger"] == "app.correlation"]
    assert (line["trace_id"], line["span_id"]) == (trace_id, span_id)
    # The access line is written after the span ended, and still names it.
    [access] = [e for e in entries if e["logger"] == "amani_observability.access"]
    assert (access["url"], access["trace_id"], access["span_id"]) == (
        "/items/3",
        trace_id,
        span_id,
    )


@pytest.mark.parametrize("spans", [ALWAYS_OFF], ids=["unsampled"], indirect=True)
async def test_an_unsampled_request_has_no_exemplar(spans: InMemorySpanExporter) -> None:
    app = instrument(
        make_app(),
        ObservabilitySettings(tracing_enabled=True, tracing_exporter="none"),
        tracer_provider=spans.provider,  # type: ignore[attr-defined]
    )
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/items/3")).status_code == 200
        scrape = await client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert spans.get_finished_spans() == ()
    assert "trace_id=" not in scrape.text
    assert (
        'http_request_duration_seconds_count{endpoint="/items/{item_id}",method="GET"} 1.0'
        in scrape.text
    )
