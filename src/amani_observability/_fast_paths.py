"""Which version-dependent fast paths the installed dependencies allow, and why.

Each shortcut below is taken only where the installed release is one it was checked
against (at import or start-up); elsewhere the public API does the same work. The test
suite prints this list in its header, so each leg of the support matrix says which
branch it ran.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["FastPath", "fast_paths"]

# (what the shortcut does, whether it is on, the package whose release decides it)
FastPath = tuple[str, bool, str]


def fast_paths() -> list[FastPath]:
    """Every version-dependent shortcut, on or off for the installed releases."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from ._routes import ROUTER_SETS_ROUTE
    from .sentry._sentry_seam import NATIVE_TRACE_BRIDGE
    from .tracing import _otel_seam

    provider = TracerProvider(sampler=ALWAYS_ON)
    processor = BatchSpanProcessor(InMemorySpanExporter())
    provider.add_span_processor(processor)
    try:
        pipeline = _otel_seam.light_pipeline(provider, provider.get_tracer("probe"))
        batch_emit = _otel_seam._batch_emit((processor,)) is not None
    finally:
        provider.shutdown()
    api, sdk = "opentelemetry-api", "opentelemetry-sdk"
    fast_context = pipeline is not None and pipeline.fast_context
    return [
        ("Starlette router names the route (scope['route'])", ROUTER_SETS_ROUTE, "starlette"),
        ("Sentry takes the OpenTelemetry trace natively", NATIVE_TRACE_BRIDGE, "sentry-sdk"),
        ("OpenTelemetry context read from its ContextVar", _otel_seam.reads_context_var(), api),
        ("OpenTelemetry light server span", pipeline is not None, sdk),
        (
            "OpenTelemetry span context built directly",
            fast_context,
            sdk,
        ),
        ("OpenTelemetry batch queue fed directly", batch_emit, sdk),
    ]


def described() -> list[str]:
    """fast_paths() as lines: `on  OpenTelemetry light server span (opentelemetry-sdk 1.45.2)`."""
    return [
        f"{'on ' if on else 'off'} {what} ({package} {_version(package)})"
        for what, on, package in fast_paths()
    ]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
