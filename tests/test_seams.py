"""Each SDK seam is on only for the releases the test matrix runs, checks itself against
the public API at start-up, and with the seam off the feature works through the public API
with the same result."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from amani_observability import (
    ObservabilitySettings,
    _gates,
    _prometheus_seam,
    instrument,
)
from amani_observability.tracing import _otel_seam
from tests.conftest import lifespan
from tests.test_light_span import comparable


@pytest.fixture
def fresh_prometheus_decision() -> Iterator[None]:
    _prometheus_seam._decision.made = False
    yield
    _prometheus_seam._decision.made = False


def test_the_installed_releases_are_ones_the_matrix_runs() -> None:
    assert [package for package in _gates.TESTED_RELEASES if not _gates.tested(package)] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.45.2", (1, 45, 2)), ("0.21.1", (0, 21, 1)), ("1.46.0rc1", None), ("2.0", None)],
)
def test_a_release_is_read_exactly_or_not_at_all(text: str, expected: Any) -> None:
    assert _gates.release_tuple(text) == expected


# --- prometheus_client ---------------------------------------------------------------------


def our_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the request metrics but those that hold timings."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.name in ("http_requests", "http_request_duration_seconds", "errors")
        for sample in family.samples
        if not sample.name.endswith(("_sum", "_created"))
        and not (sample.name.endswith("_bucket") and sample.labels.get("le") != "+Inf")
    }


async def measured(off: bool, monkeypatch: pytest.MonkeyPatch) -> dict[Any, float]:
    """Requests through instrument(), the prometheus seam forced off or not: what changed."""
    if off:
        monkeypatch.setattr(_prometheus_seam, "tested", lambda package: False)
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise RuntimeError("kaboom")
        return {"item_id": item_id}

    instrument(app, ObservabilitySettings(log_json=False))
    before = our_samples()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for path in ("/items/1", "/items/2", "/items/0", "/nowhere"):
            await c.get(path)
    after = our_samples()
    assert _prometheus_seam.enabled() is not off
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


async def test_requests_are_measured_the_same_with_the_prometheus_seam_off(
    monkeypatch: pytest.MonkeyPatch, fresh_prometheus_decision: None
) -> None:
    fast = await measured(False, monkeypatch)
    _prometheus_seam._decision.made = False
    public = await measured(True, monkeypatch)
    assert fast == public
    assert fast[("http_requests_total", (("endpoint", "/items/{item_id}"), ("method", "GET"),
                                         ("status", "500")))] == 1.0  # fmt: skip


def test_a_release_outside_the_matrix_gets_the_public_calls(
    monkeypatch: pytest.MonkeyPatch, fresh_prometheus_decision: None
) -> None:
    monkeypatch.setattr(_prometheus_seam, "tested", lambda package: False)
    installed = version("prometheus-client")
    assert _prometheus_seam.describe() == (
        f"prometheus off (prometheus-client {installed} is not a tested release)"
    )
    histogram = REGISTRY  # any object: with the seam off nothing of it is read
    assert _prometheus_seam.histogram_parts(histogram) is None


def test_a_shortcut_that_counts_differently_is_switched_off(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh_prometheus_decision: None,
) -> None:
    def off_by_one_bucket(parts: Any) -> Any:
        observe_sum, upper_bounds, bucket_incs = parts

        def observe(amount: float) -> None:
            observe_sum(amount)
            bucket_incs[min(len(bucket_incs) - 1, 1 + sum(b < amount for b in upper_bounds))](1)

        return observe

    monkeypatch.setattr(_prometheus_seam, "_bisecting_observe", off_by_one_bucket)
    with caplog.at_level(logging.INFO, "amani_observability.metrics"):
        assert _prometheus_seam.enabled() is False
    assert caplog.messages == ["prometheus fast path off: differs from the public API's samples"]
    assert _prometheus_seam.describe() == "prometheus off (differs from the public API's samples)"


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
