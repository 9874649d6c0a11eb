"""Sentry error tracking: a cheap per-request middleware, scoped capture, status-code policy.

    from amani_observability.sentry import add_breadcrumb, capture_exception, init_sentry

`instrument()` runs `init_sentry()` at lifespan start-up when `SENTRY_DSN` is set and runs
the Sentry hooks between tracing and metrics. sentry-sdk's own Starlette and FastAPI
integrations are switched off: they patch request handling and read request data on every
request (their cost is in docs/performance.md). The hooks do the same job with one isolation
scope and one event processor object per request; request data, tags and the transaction
name are attached by that processor, only when an event is sent. The SDK's other
integrations (logging, httpx, ...) stay on, two of them changed: SQLAlchemy in errors-only
mode (_queries.py) and threading (_threads.py).
"""

from __future__ import annotations

from ._core import (
    SentryMiddleware,
    add_breadcrumb,
    before_send_handler,
    capture_exception,
    flush_sentry,
    http_status_of,
    init_sentry,
)

__all__ = [
    "SentryMiddleware",
    "add_breadcrumb",
    "before_send_handler",
    "capture_exception",
    "flush_sentry",
    "http_status_of",
    "init_sentry",
]
