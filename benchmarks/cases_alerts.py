"""Alert dispatcher rows: what it costs a request to have it installed, and to submit().

The dispatcher adds no middleware, so the first row should match bare FastAPI; the
second is the price of one `submit()` on the request path (the sending happens later,
in the dispatcher's worker task). No peer: apprise, the usual pick, has no async queue.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Case, bare_app


def _settings() -> Any:
    from amani_observability import ObservabilitySettings

    # Only the dispatcher: no request-ID layer, no access log, no metrics. No channel is
    # configured, so the worker's sends end at once as not_configured.
    return ObservabilitySettings(
        log_json=False,
        metrics_enabled=False,
        request_id_enabled=False,
        access_log_enabled=False,
        alert_queue_size=1_000_000,
    )


def alerts_installed() -> Any:
    from amani_observability import instrument

    return instrument(bare_app(), _settings())


def alert_submit_per_request() -> Any:
    from fastapi import FastAPI

    from amani_observability import instrument
    from amani_observability.alerts import get_dispatcher

    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        get_dispatcher().submit("slow item lookup", "info", {"item_id": item_id}, ["webhook"])
        return {"item_id": item_id}

    return instrument(app, _settings())


CASES = [
    Case("+ amani alert dispatcher installed", alerts_installed, group="alerts"),
    Case("+ amani alert submit() per request", alert_submit_per_request, group="alerts"),
]
