"""Request-ID middleware rows: ours against asgi-correlation-id."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Case, bare_app


def ours_request_id() -> Any:
    from amani_observability import ObservabilitySettings, instrument

    # Access log off: asgi-correlation-id writes none either (uvicorn's would, for both).
    settings = ObservabilitySettings(
        log_json=False, metrics_enabled=False, access_log_enabled=False
    )
    return instrument(bare_app(), settings)


def asgi_correlation_id() -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware

    app = bare_app()
    app.add_middleware(CorrelationIdMiddleware)
    return app


CASES = [
    Case("+ asgi-correlation-id", asgi_correlation_id),
    Case(
        "+ amani request ID",
        ours_request_id,
        peer="+ asgi-correlation-id",
        target=None,  # for information: issue 21's targets are the whole stack's
    ),
]
