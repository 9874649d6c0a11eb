"""An SDK that renames or reshapes what a shortcut relies on costs the shortcut, never a
request or start-up: each shortcut's internals are broken here as a new release would
break them, and the feature is run through its fallback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, StaticSampler
from prometheus_client import REGISTRY

from amani_observability import (
    ObservabilitySettings,
    _fallbacks,
    instrument,
    metrics,
)
from amani_observability.request_id import current_request_id
from amani_observability.sentry import _core as sentry
from amani_observability.tracing import _otel_seam
from tests.conftest import lifespan
from tests.sentry_stand_in import SentryStandIn
from tests.support import http_scope
from tests.test_light_span import sdk_root_flags
from tests.test_seams import exported


@pytest.fixture(autouse=True)
def no_fallbacks_yet() -> Iterator[None]:
    _fallbacks.reset()
    yield
    _fallbacks.reset()


def probe_provider(sampler: Any = None) -> TracerProvider:
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return provider


# --- OpenTelemetry: start-up ----------------------------------------------------------------


def test_a_light_span_whose_flags_differ_from_the_sdks_is_switched_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The drift the hand-picked comparison missed: the whole record is compared now."""
    wrong = (sdk_root_flags() & ~0x01) ^ 0x02
    monkeypatch.setattr(_otel_seam, "_sdk_flags", lambda ids: (wrong, wrong))
    provider = probe_provider()
    with caplog.at_level(logging.INFO, "amani_observability.tracing"):
        assert _otel_seam.light_pipeline(provider, provider.get_tracer("t")) is None
    assert caplog.messages == [
        "light server span off: it differs from the SDK's span in trace_flags"
    ]


def test_a_reshaped_static_sampler_costs_the_shortcut_not_start_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """StaticSampler's decision renamed: the sampler itself no longer answers as before."""
    sampler = StaticSampler(Decision.RECORD_AND_SAMPLE)
    monkeypatch.delattr(sampler, "_decision")
    provider = probe_provider(sampler)
    with caplog.at_level(logging.INFO, "amani_observability.tracing"):
        assert _otel_seam.light_pipeline(provider, provider.get_tracer("t")) is None
    assert caplog.messages == ["light server span off: could not check it against the SDK"]


class ReshapedSpanContext(tuple):  # type: ignore[type-arg]
    """A SpanContext that gained a field: the fast path's six-item tuple no longer is one."""

    def __new__(cls, *fields: Any) -> ReshapedSpanContext:
        return tuple.__new__(cls, (*fields, None, None, True, "new field")[:7])


def test_a_reshaped_span_context_costs_the_direct_build_not_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_otel_seam, "SpanContext", ReshapedSpanContext)
    assert _otel_seam._span_context_layout_holds() is False


def test_a_span_context_probe_that_raises_costs_the_direct_build_not_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def raising(*args: Any) -> None:
        raise TypeError("SpanContext() takes no positional arguments")

    monkeypatch.setattr(_otel_seam, "SpanContext", raising)
    assert _otel_seam._span_context_layout_holds() is False


async def test_requests_are_traced_by_the_sdk_when_the_light_span_check_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check raising: the SDK's own span, recording exactly what the light one does."""
    light_seen, light = await exported(monkeypatch)

    def broken(provider: object, tracer: object) -> None:
        raise AttributeError("'TracerProvider' object has no attribute '_span_limits'")

    monkeypatch.setattr(_otel_seam, "_pipeline_for", broken)
    sdk_seen, sdk = await exported(monkeypatch)
    assert (light_seen, sdk_seen) == (["LightSpan"], ["_Span"])
    assert sdk == light
    assert [(record["name"], record["trace_flags"]) for record in sdk] == [
        ("GET /items/{item_id}", sdk_root_flags())
    ]


# --- Sentry: the request path -----------------------------------------------------------------


def sentry_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise RuntimeError("kaboom")
        return {"item_id": item_id}

    return app


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def messages_into(messages: list[dict[str, Any]]) -> Any:
    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    return send


async def test_a_failing_sentry_scope_copy_costs_the_request_scopes_not_the_request(
    sentry_server: SentryStandIn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = sentry_app()
    settings = ObservabilitySettings(
        sentry_dsn=sentry_server.dsn, log_json=False, metrics_enabled=False
    )
    instrument(app, settings)
    sentry._blank()

    def renamed(scope: Any) -> Any:
        raise AttributeError("'Scope' object has no attribute '_propagation_context'")

    monkeypatch.setattr(sentry, "_copy_scope", renamed)
    async with lifespan(app):
        target = app.middleware_stack
        statuses = []
        with caplog.at_level(logging.WARNING, "amani_observability"):
            for path in ("/items/1", "/items/2", "/items/0"):
                messages: list[dict[str, Any]] = []
                with contextlib.suppress(RuntimeError):  # re-raised for the server to log
                    await target(http_scope(path), receive, messages_into(messages))
                statuses += [m["status"] for m in messages if m["type"] == "http.response.start"]
                # Nothing of the request is left in the caller's context.
                assert current_request_id() is None
                assert trace.get_current_span() is trace.INVALID_SPAN
    sentry_sdk.flush(timeout=10)
    assert statuses == [200, 200, 500]
    # The error still reaches Sentry, through the scopes the request came with.
    assert [event["exception"]["values"][-1]["value"] for event in sentry_server.events()] == [
        "kaboom"
    ]
    # Said once, the later failures counted for the next line.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "Sentry request scopes failed 1 time(s) (AttributeError: 'Scope' object has no "
        "attribute '_propagation_context'): the request ran in the scopes it came with. "
        "Is this SDK release a supported one?"
    ]
    assert _fallbacks.failures() == {"Sentry request scopes": 2}


# --- prometheus_client: database queries ----------------------------------------------------


def query_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.name == "db_query_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }


class RenamedChildren:
    """db_query_duration_seconds as a prometheus_client that renamed Histogram._metrics
    shows it to us: everything public works, the children's store is not where it was."""

    def __init__(self, histogram: Any) -> None:
        self.labels = histogram.labels


def test_a_renamed_histogram_children_store_costs_the_cache_not_the_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    histogram = metrics.db_query_duration_seconds
    engine = metrics.instrument_sqlalchemy(sqlalchemy.create_engine("sqlite://"))
    with monkeypatch.context() as patch, engine.connect() as connection:
        patch.setattr(metrics, "db_query_duration_seconds", RenamedChildren(histogram))
        assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        assert connection.execute(sqlalchemy.text("SELECT 2")).scalar() == 2
    assert query_samples() == {("db_query_duration_seconds_count", (("operation", "SELECT"),)): 2.0}
    assert _fallbacks.failures() == {}


def test_a_failing_observation_costs_the_sample_not_the_query(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")

    def renamed(*labels: str) -> Any:
        raise AttributeError("'Histogram' object has no attribute '_labelnames'")

    metrics._query_series.clear()
    engine = metrics.instrument_sqlalchemy(sqlalchemy.create_engine("sqlite://"))
    with (
        monkeypatch.context() as patch,
        caplog.at_level(logging.WARNING, "amani_observability"),
        engine.connect() as connection,
    ):
        patch.setattr(metrics.db_query_duration_seconds, "labels", renamed)
        assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    assert caplog.messages == [
        "db_query_duration_seconds observation failed 1 time(s) (AttributeError: "
        "'Histogram' object has no attribute '_labelnames'): the query's duration is not "
        "recorded. Is this SDK release a supported one?"
    ]
