"""OpenTelemetry tracing: the provider, one SERVER span per request, and the helpers.

    from amani_observability.tracing import add_span_attributes, get_tracer

    tracer = get_tracer(__name__)
    with tracer.start_as_current_span("process_transaction"):
        add_span_attributes(transaction_id=tx_id, amount=amount)

`instrument()` adds `TracingMiddleware` when `TRACING_ENABLED` is true (when it is false
this module is not even imported). The provider is built at lifespan start-up, once per
worker process (fork-based servers: opentelemetry-python #1567), and flushed and shut
down at lifespan shutdown with a bounded wait. A TracerProvider the service set itself
is used as it is, never replaced.

Server spans follow the stable HTTP semantic conventions: named `{method} {route}` (or
`{method}` when no route matched, never the raw path), with no extra send/receive spans
(opentelemetry-python-contrib #635, #831). The request ID is the `request.id` attribute.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from .._asgi import ASGIApp
from .._lifecycle import Lifecycle
from .._pipeline import Pipeline
from ..settings import ObservabilitySettings
from ._hooks import REQUEST_ID_ATTRIBUTE, tracing_hooks
from ._provider import active

__all__ = ["REQUEST_ID_ATTRIBUTE", "TracingMiddleware", "add_span_attributes", "get_tracer"]

# --- helpers for application code ----------------------------------------------------------


def get_tracer(name: str, version: str | None = None) -> Tracer:
    """A tracer for custom spans, usable at import time, before start-up.

    It follows the provider tracing started with (the service's own, or ours), so
    `tracer = get_tracer(__name__)` at module level works even though the provider only
    exists after lifespan start-up.
    """
    return _LazyTracer(name, version)


class _LazyTracer(Tracer):
    """Resolves to the active provider's tracer on each use (cached per provider)."""

    def __init__(self, name: str, version: str | None) -> None:
        self._name = name
        self._version = version
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None

    def _real(self) -> Tracer:
        provider = active.provider or trace.get_tracer_provider()
        if provider is not self._provider or self._tracer is None:
            self._tracer = provider.get_tracer(self._name, self._version)
            self._provider = provider
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._real().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        # The real tracer's context manager works both with `with` and as a decorator.
        return self._real().start_as_current_span(*args, **kwargs)


_PLAIN_TYPES = (str, bool, int, float)


def add_span_attributes(**attributes: Any) -> None:
    """Set attributes on the current span; a no-op outside a (recording) span.

    `None` values are skipped; values OpenTelemetry cannot carry (Decimal, UUID,
    datetime, dicts, mixed lists) are stored as their `str()`.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    clean: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        clean[key] = value if _is_attribute_value(value) else str(value)
    if clean:
        span.set_attributes(clean)


def _is_attribute_value(value: object) -> bool:
    if type(value) in _PLAIN_TYPES:
        return True
    if isinstance(value, (list, tuple)) and value:
        first = type(value[0])
        return first in _PLAIN_TYPES and all(type(item) is first for item in value)
    return False


class TracingMiddleware(Pipeline):
    """Tracing alone, as an ASGI middleware: set up from `settings` (default: the
    environment) at lifespan start-up, like `instrument()` does with every concern."""

    def __init__(
        self,
        app: ASGIApp,
        settings: ObservabilitySettings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        lifecycle = Lifecycle()
        hooks = tracing_hooks(settings or ObservabilitySettings(), lifecycle, tracer_provider)
        super().__init__(app, (hooks,), lifecycle)
