"""`amani_observability_dropped_total{pipeline, reason}`: what the library had to drop.

Observability that loses data silently is worse than none: an operator trusts the gaps.
Each pipeline counts what it drops here, so one alert rule (ObservabilityPipelineLosing)
covers them all:

    spans          queue_full (the batch processor's queue was full), export_failed
    sentry_events  queue_overflow, ratelimit_backoff, network_error, ... (sentry-sdk's
                   own client-report reasons)
    alerts         dropped (submit() refused: queue full, shut down), lost (still pending
                   at the shutdown deadline)
    log_lines      write_error (the log stream refused the line)
"""

from __future__ import annotations

from prometheus_client import Counter

from ._registry import get_or_create

DROPPED_METRIC = "amani_observability_dropped_total"
# The series made at start-up, at zero: Prometheus' increase() cannot see the first loss
# of a series that appears with it.
KNOWN_LOSSES: tuple[tuple[str, str], ...] = (
    ("spans", "queue_full"),
    ("spans", "export_failed"),
    ("sentry_events", "queue_overflow"),
    ("sentry_events", "ratelimit_backoff"),
    ("sentry_events", "network_error"),
    ("alerts", "dropped"),
    ("alerts", "lost"),
    ("log_lines", "write_error"),
)


def dropped_counter() -> Counter:
    """Get-or-create in the default registry (a re-imported module must not register twice)."""
    return get_or_create(
        Counter,
        DROPPED_METRIC,
        "Telemetry amani_observability dropped, by pipeline (spans, sentry_events, alerts, "
        "log_lines) and reason.",
        labelnames=["pipeline", "reason"],
    )


def declare_known_losses() -> None:
    counter = dropped_counter()
    for pipeline, reason in KNOWN_LOSSES:
        counter.labels(pipeline, reason)


def count_dropped(pipeline: str, reason: str, amount: float = 1) -> None:
    """Count `amount` items of `pipeline` dropped for `reason`; never raises."""
    if amount > 0:
        try:
            dropped_counter().labels(pipeline, reason).inc(amount)
        except Exception:  # counting a loss must never cause another
            return
