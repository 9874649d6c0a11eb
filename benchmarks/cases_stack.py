"""Whole-stack rows: everything instrument() does against the four peers stacked.

Ours: request ID + metrics + tracing (100 % sampling, BatchSpanProcessor, dropping
exporter) + Sentry errors-only, in one instrument() call. The peers: asgi-correlation-id
+ prometheus-fastapi-instrumentator + opentelemetry-instrumentation-fastapi (same kind of
provider) + sentry-sdk's default FastAPI integration (traces_sample_rate=0).

Each side runs in its own process (sentry-sdk patches Starlette process-wide) with its
own bare baseline; the ratio compares overheads. As in cases_sentry.py, the peers'
Sentry client is current only while their app runs, which errs in their favour.
"""

from __future__ import annotations

from typing import Any

from benchmarks.cases_sentry import DSN, ENVIRONMENT, RELEASE, with_sentry_sdk_client
from benchmarks.cases_tracing import provider
from benchmarks.harness import Case, bare_app

PEERS = "+ peer stack (ACI + PFI + OTel + sentry-sdk)"
OURS = "+ amani full stack"


def instrument_fully(app: Any, *, access_log: bool = False) -> Any:
    """`app` under the whole stack, as the row measures it."""
    from amani_observability import ObservabilitySettings, instrument, tracing

    tracing._injected_provider = provider()
    settings = ObservabilitySettings(
        tracing_enabled=True,
        sentry_dsn=DSN,
        environment=ENVIRONMENT,
        service_version=RELEASE,
        log_json=False,
        access_log_enabled=access_log,
    )
    return instrument(app, settings)


def _ours(*, access_log: bool) -> Any:
    return instrument_fully(bare_app(), access_log=access_log)


def ours() -> Any:
    # The peers write no access log (uvicorn's would be there for both): leave ours out.
    return _ours(access_log=False)


def ours_with_access_log() -> Any:
    import logging

    # What a default instrument() does besides: one access-log record per request. The
    # record is created and filtered; no handler is attached, so nothing is written.
    logging.getLogger("amani_observability.access").setLevel(logging.INFO)
    return _ours(access_log=True)


def peers() -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    app = bare_app()
    app.add_middleware(CorrelationIdMiddleware)
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider())
    return with_sentry_sdk_client(app)


CASES = [
    Case(PEERS, peers, group="stack-peers"),
    Case(OURS, ours, group="stack", peer=PEERS, target=0.1, bare_target=1.5),
    # What the default access log adds on top; the peers write none, so no target.
    Case(f"{OURS} + access log", ours_with_access_log, group="stack", peer=PEERS),
]
