"""The tracer provider: the service's own, or one built from the settings, registered
globally and shut down with a bounded wait; and the library instrumentations switched on."""

from __future__ import annotations

import importlib
import logging
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import (
    TracerProvider,
)

from .._redaction import mask_userinfo
from ..settings import ObservabilitySettings, parse_otlp_headers
from ._export import (
    CountingBatchSpanProcessor,
    ExportGuard,
    max_queue_size,
)

if TYPE_CHECKING:
    from ..settings import ObservabilitySettings


logger = logging.getLogger("amani_observability.tracing")

DEFAULT_ENDPOINTS = {
    "otlp": "http://localhost:4317",
    "otlp-http": "http://localhost:4318/v1/traces",
}
# Seconds one OTLP export may take, retries included (the exporter gives up after it).
EXPORT_TIMEOUT = 10.0
USING_EXISTING_PROVIDER = (
    "Tracing uses the TracerProvider the service set itself; TRACING_EXPORTER, OTLP_* and "
    "TRACING_SAMPLE_RATE do not apply to it"
)
INSTRUMENTATION_FAILED = "Could not switch on %s; carrying on without it"
INSTRUMENTATION_UNSUPPORTED = "Not switching on %s: %s"

# The instrumentations instrument() switches on when they are installed.
_LIBRARY_INSTRUMENTORS = (
    ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    ("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
)
# Providers we created, registered globally and have since shut down: OpenTelemetry
# cannot replace a global provider, so a second start-up in the same process (tests,
# an embedded server restarted) builds a fresh one instead of reusing a dead one.
retired: list[TracerProvider] = []


class _Active:
    """The tracing that start-up set up in this process, for get_tracer() and correlation."""

    provider: TracerProvider | None = None


active = _Active()


# --- provider set-up and shutdown -----------------------------------------------------------


def provider_for(
    settings: ObservabilitySettings, given: TracerProvider | None
) -> tuple[TracerProvider, bool, ExportGuard | None]:
    """(provider, whether we own it, our export guard) for this process."""
    if given is not None:
        return given, False, None  # the service's own: not made global, never shut down
    current = trace.get_tracer_provider()
    registrable = isinstance(current, trace.ProxyTracerProvider)
    if not registrable and not any(current is retired for retired in retired):
        logger.info(USING_EXISTING_PROVIDER)
        return current, False, None
    provider, guard = build_provider(settings)
    if registrable:
        # Global, so the service's own trace.get_tracer() and other instrumentations
        # (redis, celery, ...) report to the same place.
        trace.set_tracer_provider(provider)
    return provider, True, guard


def build_provider(settings: ObservabilitySettings) -> tuple[TracerProvider, ExportGuard | None]:
    """An SDK TracerProvider from settings: resource, parent-based ratio sampler, batching."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": settings.service_version,
            "deployment.environment.name": settings.environment,
            # Per process: each worker of a forking server is its own instance.
            "service.instance.id": str(uuid.uuid4()),
        }
    )
    provider = SdkTracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_rate)),
        # Our lifespan shutdown flushes with a bounded wait; an atexit flush against a
        # dead collector could hold the process up for the exporter's full timeout.
        shutdown_on_exit=False,
    )
    exporter, target = _exporter(settings)
    if exporter is None:
        return provider, None
    guard = ExportGuard(exporter, target)
    provider.add_span_processor(CountingBatchSpanProcessor(guard, max_queue_size()))
    return provider, guard


def _exporter(settings: ObservabilitySettings) -> tuple[SpanExporter | None, str]:
    kind = settings.tracing_exporter
    if kind == "none":
        return None, ""
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), "the console"
    endpoint = settings.otlp_endpoint or DEFAULT_ENDPOINTS[kind]
    headers = (
        parse_otlp_headers(settings.otlp_headers.get_secret_value())
        if settings.otlp_headers is not None
        else {}
    )
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        grpc = GrpcExporter(endpoint=endpoint, headers=headers or None, timeout=EXPORT_TIMEOUT)
        return grpc, mask_userinfo(endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if urlsplit(endpoint).path in ("", "/"):
        # A bare collector address: the traces path is the OTLP/HTTP default.
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    http = HttpExporter(endpoint=endpoint, headers=headers or None, timeout=EXPORT_TIMEOUT)
    return http, mask_userinfo(endpoint)


def instrument_libraries(provider: TracerProvider) -> list[Any]:
    """Switch on the httpx and SQLAlchemy instrumentations that are installed."""
    switched_on = []
    for module_name, class_name in _LIBRARY_INSTRUMENTORS:
        try:
            instrumentor = getattr(importlib.import_module(module_name), class_name)()
        except ImportError:
            continue  # the instrumentation, or the library itself, is not installed
        if instrumentor.is_instrumented_by_opentelemetry:
            continue  # the service switched it on itself: leave it to the service
        conflict = _dependency_conflict(instrumentor)
        if conflict is not None:
            # e.g. a SQLAlchemy release newer than the instrumentation supports: one
            # calm line instead of the instrumentation's error on every start-up.
            logger.info(INSTRUMENTATION_UNSUPPORTED, class_name, conflict)
            continue
        try:
            instrumentor.instrument(tracer_provider=provider, raise_exception_on_conflict=True)
        except ImportError:
            continue
        except Exception as exc:
            if type(exc).__name__ == "DependencyConflictError":
                # e.g. a SQLAlchemy release newer than the instrumentation supports: one
                # calm line instead of the instrumentation's error on every start-up.
                logger.info(INSTRUMENTATION_UNSUPPORTED, class_name, exc)
            else:
                logger.warning(INSTRUMENTATION_FAILED, class_name, exc_info=True)
            continue
        if instrumentor.is_instrumented_by_opentelemetry:
            switched_on.append(instrumentor)
    return switched_on


def _dependency_conflict(instrumentor: Any) -> object | None:
    """The instrumentation's own check of the installed library's version, asked first:
    instrumentations before 0.5xb0 log an error on a conflict rather than raising it."""
    try:
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

        conflict: object | None = get_dependency_conflicts(
            instrumentor.instrumentation_dependencies()
        )
    except Exception:
        return None  # instrument() checks again and says what is wrong
    return conflict
