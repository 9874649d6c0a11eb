"""Tracing in the demo app under a real uvicorn, exporting to a real OTLP/gRPC receiver."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support import OTLPReceiver, UvicornProcess, otlp_value

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


def test_one_server_span_per_request_reaches_the_collector_and_the_logs(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        env = {
            "TRACING_ENABLED": "true",
            "OTLP_ENDPOINT": receiver.endpoint,
            "SERVICE_NAME": "demo-uvicorn",
        }
        with UvicornProcess(
            "examples.demo_app.main:app", free_port(), env=env, log_path=tmp_path / "uvicorn.log"
        ) as server:
            looked_up = httpx.get(
                server.base_url + "/api/v1/escrow/transactions/unknown",
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
            )
            registered = httpx.post(
                server.base_url + "/api/v1/users/register", json={"email": "ada@example.com"}
            )
            failed = httpx.get(server.base_url + "/api/v1/fail")
        # uvicorn has stopped: its lifespan shutdown flushed the batch processor.
        output = server.output()
        resource = {
            a.key: otlp_value(a.value) for a in receiver.resource_spans()[0].resource.attributes
        }
        spans = receiver.spans()

    assert (looked_up.status_code, registered.status_code, failed.status_code) == (404, 201, 500)
    assert resource["service.name"] == "demo-uvicorn"
    # FastAPI's native telemetry stays off: no second server span, no fastapi.* spans;
    # /health (polled while uvicorn started) is excluded.
    assert sorted((s.name, s.kind) for s in spans) == [
        ("GET /api/v1/escrow/transactions/{transaction_id}", 2),
        ("GET /api/v1/fail", 2),
        ("POST /api/v1/users/register", 2),
    ]
    by_name = {s.name: s for s in spans}
    continued = by_name["GET /api/v1/escrow/transactions/{transaction_id}"]
    assert (continued.trace_id.hex(), continued.parent_span_id.hex()) == (TRACE_ID, PARENT_SPAN_ID)
    fail = by_name["GET /api/v1/fail"]
    assert fail.status.code == 2  # STATUS_CODE_ERROR
    assert [e.name for e in fail.events] == ["exception"]
    assert {a.key: otlp_value(a.value) for a in fail.attributes}["error.type"] == "RuntimeError"

    register = by_name["POST /api/v1/users/register"]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    registered_line = next(e for e in lines if e.get("message") == "registered user")
    assert (registered_line["trace_id"], registered_line["span_id"]) == (
        register.trace_id.hex(),
        register.span_id.hex(),
    )
