"""Each SDK shortcut is on only for the releases the test matrix runs, checks itself against
the public API at start-up, and with the shortcut off the feature works through the public
API with the same result; what prometheus_client's seam reads is what it built."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Histogram

from amani_observability import (
    ObservabilitySettings,
    _gates,
    _prometheus_seam,
    instrument,
)
from amani_observability.tracing import _otel_seam
from tests.conftest import lifespan
from tests.test_light_span import comparable


def test_the_installed_releases_are_ones_the_matrix_runs() -> None:
    assert [package for package in _gates.TESTED_RELEASES if not _gates.tested(package)] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.45.2", (1, 45, 2)), ("0.21.1", (0, 21, 1)), ("1.46.0rc1", None), ("2.0", None)],
)
def test_a_release_is_read_exactly_or_not_at_all(text: str, expected: Any) -> None:
    assert _gates.release_tuple(text) == expected


# --- prometheus_client: what is read beneath its public API ---------------------------------


def test_the_prometheus_readers_see_a_histogram_as_prometheus_client_built_it() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("probe_seconds", "probe", ["code"], buckets=(0.1, 1.0), registry=registry)
    child = histogram.labels("200")
    assert _prometheus_seam.registered(registry, "probe_seconds") is histogram
    assert _prometheus_seam.registered(registry, "other_seconds") is None
    assert _prometheus_seam.label_names(histogram) == ("code",)
    assert _prometheus_seam.upper_bounds(histogram) == (0.1, 1.0, float("inf"))
    assert _prometheus_seam.children_of(histogram) == {("200",): child}
    assert _prometheus_seam.values_in_memory() is True


def test_the_prometheus_readers_answer_none_where_the_internals_moved() -> None:
    moved: Any = object()
    assert _prometheus_seam.registered(moved, "probe_seconds") is None
    assert _prometheus_seam.label_names(moved) is None
    assert _prometheus_seam.upper_bounds(moved) is None
    assert _prometheus_seam.children_of(moved) is None


# --- OpenTelemetry -------------------------------------------------------------------------


async def exported(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[dict[str, Any]]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    seen: list[str] = []
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        seen.append(type(trace.get_current_span()).__name__)
        return {"item_id": item_id}

    instrument(
        app, ObservabilitySettings(tracing_enabled=True, log_json=False), tracer_provider=provider
    )
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/items/1", headers={"X-Request-ID": "r-1"})
    return seen, [comparable(span) for span in memory.get_finished_spans()]


async def test_an_opentelemetry_sdk_outside_the_matrix_gets_the_sdks_own_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast_seen, fast = await exported(monkeypatch)
    monkeypatch.setattr(_otel_seam, "tested", lambda package: False)
    provider = TracerProvider()
    assert _otel_seam.describe(*_otel_seam.light_decision(provider, provider.get_tracer("t"))) == (
        f"otel span off (opentelemetry-sdk {version('opentelemetry-sdk')} is not a tested release)"
    )
    sdk_seen, sdk = await exported(monkeypatch)
    assert (fast_seen, sdk_seen) == (["LightSpan"], ["_Span"])
    assert fast == sdk
