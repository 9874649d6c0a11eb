"""The two duration histograms, whose bucket layout METRICS_BUCKETS decides."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import REGISTRY, Histogram

from .._prometheus_seam import registered, upper_bounds
from .._registry import get_or_create

HTTP_DURATION_DOC = "Time from receiving the request to sending the last response byte, in seconds."
DB_DURATION_DOC = "Database query duration in seconds, by operation."


def histogram(
    name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
) -> Histogram:
    """Get-or-create a histogram; a different bucket layout replaces the registered one."""
    existing = registered(REGISTRY, name)
    if isinstance(existing, Histogram) and (upper_bounds(existing) or ())[:-1] != tuple(buckets):
        # Buckets are fixed at creation: METRICS_BUCKETS differing from the current
        # layout means a new histogram (its series start from zero).
        REGISTRY.unregister(existing)
    return get_or_create(
        Histogram, name, documentation, labelnames=labelnames, buckets=tuple(buckets)
    )


def http_duration_histogram(buckets: Sequence[float]) -> Histogram:
    return histogram(
        "http_request_duration_seconds", HTTP_DURATION_DOC, ("method", "endpoint"), buckets
    )


def db_duration_histogram(buckets: Sequence[float]) -> Histogram:
    return histogram("db_query_duration_seconds", DB_DURATION_DOC, ("operation",), buckets)
