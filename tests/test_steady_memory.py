"""The whole stack in a steady state: a bounded run neither grows RSS nor adds series.

A short version of `python -m benchmarks.memory` (which runs 1,000,000 requests): the
same mix of known routes and a scanner's random paths, methods and Host headers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sentry_sdk.scope import Scope

from amani_observability import ObservabilitySettings, instrument
from benchmarks import memory
from tests.conftest import free_port

WARMUP = 4_000
REQUESTS = 16_000
# Far below what keeping anything per request would cost over 16,000 requests (a scope
# dict alone is ~1 KB: 16 MB), far above allocator noise (a few 256 KB arenas).
MAX_GROWTH = 2 * 1024 * 1024
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


class DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    """100 % sampling through a batch processor, as in production, exporting nowhere."""
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture(autouse=True)
def no_sentry_client() -> Iterator[None]:
    yield
    sentry_sdk.get_global_scope().set_client(None)
    for scope in (
        sentry_sdk.get_global_scope(),
        Scope.get_isolation_scope(),
        Scope.get_current_scope(),
    ):
        scope.clear()


def full_stack(tracer_provider: TracerProvider) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    settings = ObservabilitySettings(
        tracing_enabled=True,
        sentry_dsn=f"http://key@127.0.0.1:{free_port()}/1",  # closed: errors-only sends nothing
        log_json=False,
        access_log_enabled=False,
    )
    return instrument(app, settings, tracer_provider=tracer_provider)


async def test_full_stack_keeps_series_and_rss_steady_under_random_paths_and_methods(
    provider: TracerProvider,
) -> None:
    result = await memory.run(
        full_stack(provider), requests=REQUESTS, warmup=WARMUP, checkpoints=4, max_seconds=120
    )

    assert result["complete"] is True
    assert result["statuses"] == {"200": 10_000, "404": 10_000}
    # One series for the route, one per method class for every unknown path.
    assert result["http_requests_total_labels"] == sorted(
        [("GET", "/items/{item_id}", "200")]
        + [(method, "<unmatched>", "404") for method in (*STANDARD_METHODS, "_OTHER")]
    )
    assert result["families_whose_series_changed"] == []
    assert result["series_constant"] is True
    assert result["rss_peak_growth_bytes"] < MAX_GROWTH, result["checkpoints"]
