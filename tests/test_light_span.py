"""The fast server span exports exactly what the SDK's own Span would."""

from __future__ import annotations

import random
from decimal import Decimal
from importlib.metadata import version
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from amani_observability import ObservabilitySettings, instrument
from amani_observability.tracing import add_span_attributes, get_tracer
from amani_observability.tracing._otel_seam import (
    LightSpan,
    _root_decision,
    light_pipeline,
    span_record,
)
from tests.conftest import lifespan


class SDKSpanProcessor(SimpleSpanProcessor):
    """Not one of the SDK's exact processor types: forces the SDK's own Span."""


def make_app(seen: list[str]) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

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


async def export(
    monkeypatch: pytest.MonkeyPatch, processor_type: type[Any], policy: str = "continue"
) -> list[Any]:
    """Run three requests through a provider with this processor: the span types the
    handlers saw, the exported spans' whole records and the traceresponse headers."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(processor_type(memory))
    seen: list[str] = []
    settings = ObservabilitySettings(
        tracing_enabled=True,
        log_json=False,
        trace_context_policy=policy,
        trace_response_header=True,
    )
    app = instrument(make_app(seen), settings, tracer_provider=provider)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    flags: list[str] = []
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path, traceparent in (
            ("/orders/o-1?x=1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("/orders/o-2", "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-03"),
            ("/fail", None),
        ):
            headers = {"X-Request-ID": "r-1"}
            if traceparent is not None:
                headers.update(traceparent=traceparent, tracestate="vendor=x")
            response = await c.get(path, headers=headers)
            flags.append(response.headers["traceresponse"].rsplit("-", 1)[1])
    provider.force_flush()
    return [seen, [comparable(span) for span in memory.get_finished_spans()], flags]


def comparable(span: ReadableSpan) -> dict[str, Any]:
    """The span's whole record (span_record), with what differs per run normalised."""
    record = span_record(span)
    record["end_time"] = "<end>"
    for event in record["events"]:
        event["timestamp"] = "<time>"
    if record["name"] == "child":
        record["parent_id"] = "<the server span>"
        record["parent"] = ("<the server span's trace>", *record["parent"][1:])
    if record["parent_id"] is None:
        record["parent"] = None  # a new trace: its ids are random
    return record


def sdk_root_flags() -> int:
    """The flags the installed SDK gives a new trace's span: 03 from opentelemetry-sdk 1.42
    (the W3C random trace id flag), 01 before."""
    major, minor = (int(part) for part in version("opentelemetry-sdk").split(".")[:2])
    return 0x03 if (major, minor) >= (1, 42) else 0x01


@pytest.mark.parametrize("processor_type", [SimpleSpanProcessor, BatchSpanProcessor])
async def test_the_fast_span_exports_what_the_sdk_span_exports(
    monkeypatch: pytest.MonkeyPatch, processor_type: type[Any]
) -> None:
    fast_seen, fast, fast_flags = await export(monkeypatch, processor_type)
    sdk_seen, sdk, sdk_flags = await export(monkeypatch, SDKSpanProcessor)
    assert (fast_seen, sdk_seen) == (["LightSpan", "LightSpan"], ["_Span", "_Span"])
    assert fast == sdk
    # Server spans carry exactly the SDK's flags: the caller's random-trace-id flag is
    # kept where the SDK keeps it, and a new trace gets the SDK's own.
    assert fast_flags == sdk_flags == ["01", f"{sdk_root_flags():02x}", f"{sdk_root_flags():02x}"]
    assert [(span["name"], span["trace_flags"]) for span in fast] == [
        ("child", 0x01),
        ("GET /orders/{order_id}", 0x01),
        ("child", sdk_root_flags()),
        ("GET /orders/{order_id}", sdk_root_flags()),
        ("GET /fail", sdk_root_flags()),
    ]
    server = fast[1]
    assert server["parent_id"] == "0x00f067aa0ba902b7"
    assert server["parent"] == (0x4BF92F3577B34DA6A3CE929D0E0E4736, True, 0x01)
    assert {k: server["attributes"][k] for k in ("order_id", "amount", "custom.list")} == {
        "order_id": "o-1",
        "amount": "12.50",
        "custom.list": ["a", "b"],
    }
    assert "skipped" not in server["attributes"]
    assert [(e["name"], e["attributes"]) for e in server["events"]] == [("checkpoint", {"step": 2})]
    failed = fast[4]
    # OK set by the handler is final, as in the SDK.
    assert failed["status"] == {"status_code": "OK"}
    assert [event["name"] for event in failed["events"]] == ["exception"]


async def test_a_restarted_trace_exports_the_same_link_from_the_fast_and_the_sdk_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TRACE_CONTEXT_POLICY=restart: a root span linked to the caller's, on both paths."""
    fast_seen, fast, fast_flags = await export(monkeypatch, BatchSpanProcessor, "restart")
    sdk_seen, sdk, sdk_flags = await export(monkeypatch, SDKSpanProcessor, "restart")
    assert (fast_seen, sdk_seen) == (["LightSpan", "LightSpan"], ["_Span", "_Span"])
    assert fast == sdk
    assert fast_flags == sdk_flags == [f"{sdk_root_flags():02x}"] * 3
    server = fast[1]
    assert (server["parent_id"], server["links"]) == (
        None,
        [
            {
                "context": {
                    "trace_id": "0x4bf92f3577b34da6a3ce929d0e0e4736",
                    "span_id": "0x00f067aa0ba902b7",
                    "trace_state": repr(TraceState([("vendor", "x")])),
                },
                "attributes": {},
            }
        ],
    )


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


class RatioSubclass(TraceIdRatioBased):
    """Not the SDK's exact sampler: it might look at more than the trace id."""


@pytest.mark.parametrize(
    "sampler",
    [
        ParentBased(TraceIdRatioBased(0.25)),
        ParentBased(TraceIdRatioBased(1.0)),
        ParentBased(TraceIdRatioBased(0.0)),
        TraceIdRatioBased(0.5),
        ParentBased(ALWAYS_ON),
        ALWAYS_ON,
        ALWAYS_OFF,
    ],
    ids=str,
)
def test_root_spans_are_decided_exactly_as_the_sdks_sampler_decides(sampler: Sampler) -> None:
    decide = _root_decision(sampler)
    assert decide is not None
    rng = random.Random(7)
    trace_ids = [rng.getrandbits(128) or 1 for _ in range(5000)]
    ours = [decide(trace_id) for trace_id in trace_ids]
    theirs = [
        sampler.should_sample(Context(), trace_id, "GET", SpanKind.SERVER).decision
        is Decision.RECORD_AND_SAMPLE
        for trace_id in trace_ids
    ]
    assert ours == theirs


def test_other_samplers_are_asked_for_every_span() -> None:
    assert _root_decision(RatioSubclass(0.5)) is None
    assert _root_decision(ParentBased(RatioSubclass(0.5))) is None
    assert _root_decision(RecordOnly()) is None


def test_a_batch_processor_gets_the_span_itself_with_the_sdks_span_context() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exported))
    pipeline = light_pipeline(provider, provider.get_tracer("t"))
    assert pipeline is not None
    assert pipeline.fast_context is True
    assert pipeline.decide_root is not None
    span = pipeline.start("GET", None)
    assert isinstance(span, LightSpan)
    context = span.get_span_context()
    assert context == SpanContext(
        context.trace_id, context.span_id, False, TraceFlags(sdk_root_flags())
    )
    assert (context.is_valid, context.is_remote, context.trace_state) == (True, False, TraceState())
    span.own_attributes = {"http.request.method": "GET"}
    span.end()
    provider.force_flush()
    (finished,) = exported.get_finished_spans()
    assert finished is span
    assert dict(finished.attributes or {}) == {"http.request.method": "GET"}
    assert (finished.kind, finished.resource, finished.instrumentation_scope) == (
        SpanKind.SERVER,
        provider.resource,
        provider.get_tracer("t")._instrumentation_scope,  # type: ignore[attr-defined]
    )
    provider.shutdown()
