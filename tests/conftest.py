"""Shared fixtures: a clean environment per test, a lifespan driver, real-process helpers."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.support import LifespanDriver

# Environment variables of the library (and of the libraries it configures).
LIBRARY_PREFIXES = (
    "SENTRY_",
    "TRACING_",
    "OTLP_",
    "SLACK_",
    "PAGERDUTY_",
    "ALERT_",
    "ALERTMANAGER_",
    "METRICS_",
    "SERVICE_",
    "LOG_",
    "REQUEST_ID_",
    "ACCESS_LOG_",
    "REDACT_",
    "PROMETHEUS_MULTIPROC_DIR",
    "ENVIRONMENT",
    "DATABASE_URL",
    "OTEL_",
    "LOOP_",
    "TRACE_",
)


def pytest_report_header() -> list[str]:
    """Which version-dependent fast paths this run takes: each matrix leg names its branch."""
    from amani_observability._fast_paths import described

    return ["amani-observability fast paths:", *(f"  {line}" for line in described())]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """Every test starts with none of our variables set and no .env file in reach."""
    for name in list(os.environ):
        if name.startswith(LIBRARY_PREFIXES):
            monkeypatch.delenv(name)
    # A test machine's scheduling pauses must not become stall warnings in tests that
    # check their log lines; the stall tests set their own threshold.
    monkeypatch.setenv("LOOP_STALL_SECONDS", "60")
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def reset_metrics() -> Iterator[None]:
    """Every test sees our metrics at zero, default buckets and no trace-ID getter."""
    _reset_metrics()
    yield
    _reset_metrics()


def _reset_metrics() -> None:
    metrics = sys.modules.get("amani_observability.metrics")
    if metrics is None:  # never imported: nothing was registered
        return
    from amani_observability import _correlation
    from amani_observability.metrics._concern import use_buckets
    from amani_observability.settings import DEFAULT_BUCKETS

    _correlation.set_trace_ids_getter(None)
    use_buckets(DEFAULT_BUCKETS)
    metrics_middleware = sys.modules.get("amani_observability.metrics._middleware")
    if metrics_middleware is not None:
        metrics_middleware.endpoint_cap.reset()
    for labelled in (
        metrics.http_requests_total,
        metrics.http_request_duration_seconds,
        metrics.http_requests_in_progress,
        metrics.db_query_duration_seconds,
        metrics.errors_total,
    ):
        labelled.clear()
    # Business counters exist once a test imported them; reading them here would create them.
    for name, (_, labelnames) in metrics._BUSINESS_COUNTERS.items():
        counter = vars(metrics).get(name)
        if counter is not None and labelnames:
            counter.clear()
        elif counter is not None:
            counter.reset()
    metrics.db_connections_active.set(0)


@pytest.fixture
def exporter() -> Any:
    """An in-memory exporter behind `exporter.provider`, for instrument(tracer_provider=...)
    (OpenTelemetry's global provider untouched)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    memory.provider = TracerProvider()  # type: ignore[attr-defined]
    memory.provider.add_span_processor(SimpleSpanProcessor(memory))  # type: ignore[attr-defined]
    return memory


@pytest.fixture
def sentry_server() -> Iterator[Any]:
    """A local stand-in for Sentry; the client and our trace bridge are gone afterwards."""
    import sentry_sdk

    from amani_observability._correlation import current_trace_ids
    from amani_observability.sentry._sentry_seam import unbridge_traces
    from tests.sentry_stand_in import SentryStandIn

    with SentryStandIn() as stand_in:
        yield stand_in
    sentry_sdk.get_global_scope().set_client(None)
    unbridge_traces(current_trace_ids)


@pytest.fixture(autouse=True)
def reset_tracing() -> Iterator[None]:
    """No test sees another's global tracer provider, trace-ID getter or tracing state."""
    _reset_tracing()
    yield
    _reset_tracing()


def _reset_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    from amani_observability import _correlation

    # OpenTelemetry lets the global provider be set once per process; its own test
    # utilities reset these two module attributes the same way.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    _correlation.set_trace_ids_getter(None)
    provider_module = sys.modules.get("amani_observability.tracing._provider")
    if provider_module is not None:
        provider_module.active.provider = None
        provider_module.retired.clear()


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run an ASGI app's lifespan start-up and shutdown around a block."""
    driver = LifespanDriver(app)
    await driver.startup()
    try:
        yield
    finally:
        await driver.shutdown()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """Path of a real binary the test needs: skip locally without it, fail under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
