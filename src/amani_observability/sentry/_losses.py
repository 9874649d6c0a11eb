"""Counting the Sentry events sentry-sdk could not send.

The SDK reports each loss to its transport's `record_lost_event()` (it becomes a client
report to Sentry); a subclass of the SDK's `HttpTransport` counts them too, as
`amani_observability_dropped_total{pipeline="sentry_events", reason=...}`, through that
public method, which exists with this meaning from sentry-sdk 2.0 on.
"""

from __future__ import annotations

from typing import Any

from sentry_sdk.transport import HttpTransport

from .._losses import count_dropped

# Reasons for an event that was meant to be sent and was not. The others (before_send,
# event_processor, sample_rate, ...) are drops that someone chose.
LOSS_REASONS = frozenset(
    {"queue_overflow", "ratelimit_backoff", "network_error", "send_error", "backpressure"}
)
# Errors and performance transactions; attachments, sessions and the like are not events.
EVENT_CATEGORIES = frozenset({"error", "transaction"})


class LossCountingTransport(HttpTransport):
    """sentry-sdk's HTTP transport, counting the events it loses."""

    def record_lost_event(
        self, reason: str, data_category: Any = None, item: Any = None, **options: Any
    ) -> None:
        try:
            category = data_category
            if category is None and item is not None:
                category = item.data_category
            if reason in LOSS_REASONS and category in EVENT_CATEGORIES:
                count_dropped("sentry_events", reason, options.get("quantity", 1))
        finally:
            super().record_lost_event(reason, data_category, item, **options)


def wants_ours(options: dict[str, Any]) -> bool:
    """Whether to pass our transport: not when the service gave its own, or asked for the
    SDK's HTTP/2 or asyncio transports (experiments a plain HttpTransport would undo)."""
    experiments = options.get("_experiments") or {}
    return options.get("transport") is None and not (
        experiments.get("transport_http2") or experiments.get("transport_async")
    )
