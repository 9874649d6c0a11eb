"""The fast server span exports exactly what the SDK's own Span would."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult
from opentelemetry.trace import Status, StatusCode

from amani_observability import ObservabilitySettings, instrument, tracing
from amani_observability._light_span import LightSpan, light_pipeline
from amani_observability.tracing import add_span_attributes, get_tracer
from tests.conftest import lifespan


class SDKSpanProcessor(SimpleSpanProcessor):
    """Not one of the SDK's exact processor types: forces the SDK's own Span."""


def make_app(seen: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        span = trace.get_current_span()
        seen.append(type(span).__name__)
        add_span_attributes(order_id=order_id, amount=Decimal("12.50"), skipped=None)
        span.set_attribute("custom.list", ["a", "b"])
        span.add_event("checkpoint", {"step": 2})
        with get_tracer("tests.light").start_as_current_span("child"):
            pass
        return {"order_id": order_id}

    @app.get("/fail")
    async def fail() -> None:
        trace.get_current_span().set_status(Status(StatusCode.OK))
        raise KeyError("gone")

    return app


async def export(monkeypatch: pytest.MonkeyPatch, processor_type: type[Any]) -> list[Any]:
    """Run two requests through a provider with this processor; what was exported."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(processor_type(memory))
    monkeypatch.setattr(tracing, "_injected_provider", provider)
    seen: list[str] = []
    app = instrument(make_app(seen), ObservabilitySettings(tracing_enabled=True, log_json=False))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get(
            "/orders/o-1?x=1",
            headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        )
        await c.get("/fail", headers={"X-Request-ID": "fail-1"})
    return [seen, [comparable(span) for span in memory.get_finished_spans()]]


def comparable(span: ReadableSpan) -> dict[str, Any]:
    attributes = dict(span.attributes or {})
    attributes.pop("request.id", None)  # generated per request
    return {
        "name": span.name,
        "kind": span.kind,
        "status": (span.status.status_code, span.status.description),
        "attributes": attributes,
        "events": [
            (
                event.name,
                {k: v for k, v in (event.attributes or {}).items() if k != "exception.stacktrace"},
            )
            for event in span.events
        ],
        "parent": None if span.parent is None else span.parent.span_id,
        "trace_id": span.context.trace_id if span.name != "GET /fail" else None,  # type: ignore[union-attr]
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope,
    }


def strip_ids(spans: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for span in spans:
        span = dict(span)
        if span["name"] == "child":
            span["parent"] = "the server span"
        out.append(span)
    return out


async def test_the_fast_span_exports_what_the_sdk_span_exports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast_seen, fast = await export(monkeypatch, SimpleSpanProcessor)
    sdk_seen, sdk = await export(monkeypatch, SDKSpanProcessor)
    assert (fast_seen, sdk_seen) == (["LightSpan"], ["_Span"])
    assert strip_ids(fast) == strip_ids(sdk)
    server = next(span for span in fast if span["name"] == "GET /orders/{order_id}")
    assert server["parent"] == 0x00F067AA0BA902B7
    assert server["trace_id"] == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert {k: server["attributes"][k] for k in ("order_id", "amount", "custom.list")} == {
        "order_id": "o-1",
        "amount": "12.50",
        "custom.list": ("a", "b"),
    }
    assert "skipped" not in server["attributes"]
    assert server["events"] == [("checkpoint", {"step": 2})]
    failed = next(span for span in fast if span["name"] == "GET /fail")
    # OK set by the handler is final, as in the SDK.
    assert failed["status"] == (StatusCode.OK, None)
    assert [name for name, _ in failed["events"]] == ["exception"]


def test_the_fast_path_steps_aside_for_set_ups_it_does_not_know() -> None:
    from opentelemetry.sdk.trace import SpanLimits

    plain = TracerProvider()
    plain.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert light_pipeline(plain, plain.get_tracer("t")) is not None

    custom = TracerProvider()
    custom.add_span_processor(SDKSpanProcessor(InMemorySpanExporter()))
    assert light_pipeline(custom, custom.get_tracer("t")) is None

    limited = TracerProvider(span_limits=SpanLimits(max_span_attribute_length=10))
    assert light_pipeline(limited, limited.get_tracer("t")) is None

    assert light_pipeline(object(), object()) is None


class RecordOnly(Sampler):
    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY)

    def get_description(self) -> str:
        return "RecordOnly"


def test_sampling_decisions_are_the_samplers() -> None:
    exported = InMemorySpanExporter()
    for sampler, expected in ((ALWAYS_OFF, "NonRecordingSpan"), (RecordOnly(), "LightSpan")):
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exported))
        pipeline = light_pipeline(provider, provider.get_tracer("t"))
        assert pipeline is not None
        span = pipeline.start("GET", None)
        assert type(span).__name__ == expected
        assert span.get_span_context().trace_flags.sampled is False
        if isinstance(span, LightSpan):
            assert span.hex_ids() is None  # not sampled: nothing to correlate with
        span.end()
    # Recorded but not sampled: the processors receive it and export nothing.
    assert exported.get_finished_spans() == ()


def test_a_light_span_ignores_changes_after_it_ended() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    pipeline = light_pipeline(provider, provider.get_tracer("t"))
    assert pipeline is not None
    span = pipeline.start("GET", None)
    assert isinstance(span, LightSpan)
    span.set_attribute("before", 1)
    context = span.get_span_context()
    assert span.hex_ids() == (format(context.trace_id, "032x"), format(context.span_id, "016x"))
    span.end()
    span.set_attribute("after", 2)
    span.update_name("renamed")
    span.end()
    [finished] = exported.get_finished_spans()
    assert (finished.name, dict(finished.attributes or {})) == ("GET", {"before": 1})
    assert span.is_recording() is False
