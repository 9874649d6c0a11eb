"""Metrics middleware rows: ours alone against prometheus-fastapi-instrumentator and
starlette-exporter, each with its default metric set and no /metrics route in play.

The scrape-cost comparison is a separate script: `python -m benchmarks.scrape_cost`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Case, bare_app


def ours_metrics() -> Any:
    from amani_observability import ObservabilitySettings, instrument

    # Metrics alone: no request ID, no access log, no JSON logging.
    settings = ObservabilitySettings(
        log_json=False, request_id_enabled=False, access_log_enabled=False
    )
    return instrument(bare_app(), settings)


def instrumentator() -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    app = bare_app()
    # Its own registry, so building the case twice cannot clash in the default one.
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    return app


def starlette_exporter() -> Any:
    from starlette_exporter import PrometheusMiddleware

    app = bare_app()
    app.add_middleware(PrometheusMiddleware, app_name="bench", prefix="bench")
    return app


CASES = [
    Case("+ prometheus-fastapi-instrumentator", instrumentator),
    Case("+ starlette-exporter", starlette_exporter),
    Case(
        "+ amani metrics",
        ours_metrics,
        peer="+ prometheus-fastapi-instrumentator",
        target=None,  # for information: issue 21's targets are the whole stack's
    ),
]
