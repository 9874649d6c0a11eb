"""Sentry under a real uvicorn: one event per unhandled error, delivered by shutdown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.sentry_stand_in import SentryStandIn
from tests.support import UvicornProcess

pytestmark = pytest.mark.integration


def test_an_unhandled_error_is_reported_once_even_though_uvicorn_logs_it(tmp_path: Path) -> None:
    with SentryStandIn() as sentry:
        env = {"SENTRY_DSN": sentry.dsn, "ENVIRONMENT": "ci", "SERVICE_VERSION": "9.9.9"}
        with UvicornProcess(
            "examples.demo_app.main:app",
            free_port(),
            env=env,
            log_path=tmp_path / "uvicorn.log",
        ) as server:
            failed = httpx.get(
                server.base_url + "/api/v1/fail", headers={"X-Request-ID": "uv-err-1"}
            )
            missing = httpx.get(server.base_url + "/api/v1/escrow/transactions/unknown")
        # uvicorn stopped: its lifespan shutdown flushed the client.
        output = server.output()
        events = sentry.events()

    assert (failed.status_code, missing.status_code) == (500, 404)
    # uvicorn logged the error too; the SDK's logging integration must not report it again.
    assert "Exception in ASGI application" in output
    [event] = events
    [exception] = event["exception"]["values"]
    assert exception["mechanism"] == {"type": "asgi", "handled": False}
    assert event["tags"]["request_id"] == "uv-err-1"
    assert event["tags"]["endpoint"] == "/api/v1/fail"
    assert (event["environment"], event["release"]) == ("ci", "9.9.9")
