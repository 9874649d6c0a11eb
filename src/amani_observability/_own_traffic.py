"""The library's own HTTP traffic (alert sends) kept out of the service's telemetry.

Inside `own_traffic()` OpenTelemetry instrumentations record nothing (the public
`suppress_instrumentation()` of opentelemetry-instrumentation, which every instrumentation
package depends on: where it is missing, nothing could trace our requests), and Sentry
records neither a breadcrumb (our `before_breadcrumb` asks `is_own_traffic()`) nor a span:
the send runs in scopes of its own with no current span. OTLP exports are suppressed
by the OpenTelemetry SDK's span processors themselves; Sentry's transport uses urllib3,
which no instrumentation we switch on traces.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from functools import cache

_sending: ContextVar[bool] = ContextVar("amani_observability_own_traffic", default=False)


def is_own_traffic() -> bool:
    """Whether the current context is one of the library's own sends."""
    return _sending.get()


@contextlib.contextmanager
def own_traffic() -> Iterator[None]:
    """Run the library's own HTTP requests unseen by the service's spans and breadcrumbs."""
    token = _sending.set(True)
    try:
        with _otel_suppression()(), _outside_sentry_spans():
            yield
    finally:
        _sending.reset(token)


@cache
def _otel_suppression() -> Callable[[], AbstractContextManager[None]]:
    """opentelemetry-instrumentation's public suppress_instrumentation, imported once."""
    try:
        utils = importlib.import_module("opentelemetry.instrumentation.utils")
    except ImportError:  # no OpenTelemetry instrumentation installed, so none to suppress
        return contextlib.nullcontext
    suppress: Callable[[], AbstractContextManager[None]] = utils.suppress_instrumentation
    return suppress


@contextlib.contextmanager
def _outside_sentry_spans() -> Iterator[None]:
    # Without sentry_sdk imported nobody can have patched httpx for Sentry.
    sentry_sdk = sys.modules.get("sentry_sdk")
    if sentry_sdk is None or not sentry_sdk.get_client().is_active():
        yield
        return
    with sentry_sdk.isolation_scope() as isolation, sentry_sdk.new_scope() as current:
        # Sentry's httpx integration parents its span on the current span or transaction.
        isolation.span = None
        current.span = None
        yield
