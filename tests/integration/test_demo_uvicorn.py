"""The demo app under a real uvicorn process on a loopback port."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support import UvicornProcess

pytestmark = pytest.mark.integration


def json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_demo_answers_with_request_ids_and_json_access_lines(tmp_path: Path) -> None:
    with UvicornProcess(
        "examples.demo_app.main:app", free_port(), log_path=tmp_path / "uvicorn.log"
    ) as server:
        ok = httpx.post(
            server.base_url + "/api/v1/users/register",
            json={"email": "ada@example.com"},
            headers={"X-Request-ID": "demo-req-1"},
        )
        failed = httpx.get(server.base_url + "/api/v1/fail", headers={"X-Request-ID": "demo-err-1"})
        minted = httpx.get(server.base_url + "/api/v1/escrow/transactions/unknown")
        # Each access line is written once its response has gone out: wait for the last
        # request's, and for the server's error line.
        awaited = ("demo-err-1", minted.headers.get("x-request-id", "no id"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(i in server.output() for i in awaited):
            time.sleep(0.05)
        output = server.output()

    assert (ok.status_code, ok.headers["x-request-id"]) == (201, "demo-req-1")
    assert ok.json()["request_id"] == "demo-req-1"
    assert (failed.status_code, failed.headers["x-request-id"]) == (500, "demo-err-1")
    assert minted.status_code == 404
    assert len(minted.headers["x-request-id"]) == 32

    access = [e for e in json_lines(output) if e["logger"] == "amani_observability.access"]
    by_id = {e["request_id"]: e for e in access}
    assert {k: by_id["demo-req-1"][k] for k in ("method", "url", "status_code")} == {
        "method": "POST",
        "url": "/api/v1/users/register",
        "status_code": 201,
    }
    assert by_id["demo-err-1"]["status_code"] == 500
    assert by_id[minted.headers["x-request-id"]]["status_code"] == 404
    # The health probe the runner used to wait for start-up is left out of the access log.
    assert [e for e in access if e["url"] == "/health"] == []
    (server_error,) = [
        e for e in json_lines(output) if e["logger"] == "uvicorn.error" and "exc_info" in e
    ]
    assert server_error["request_id"] == "demo-err-1"
    assert server_error["exc_info"].endswith("RuntimeError: demo failure")
    app_lines = [e for e in json_lines(output) if e["logger"] == "demo"]
    assert [(e["message"], e["request_id"]) for e in app_lines] == [
        ("registered user", "demo-req-1")
    ]


def test_demo_counts_business_events_and_database_work_on_metrics(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with UvicornProcess(
        "examples.demo_app.main:app", free_port(), log_path=tmp_path / "uvicorn.log"
    ) as server:
        base = server.base_url + "/api/v1"
        assert httpx.post(base + "/users/register", json={"email": "a@x.io"}).status_code == 201
        for kind in ("hold", "hold", "release"):
            response = httpx.post(base + "/escrow/transactions", json={"type": kind, "amount": 5})
            assert response.status_code == 201
        kyc = {"user_id": "u1", "document_type": "passport"}
        assert httpx.post(base + "/kyc/submissions", json=kyc).status_code == 202
        text = httpx.get(server.base_url + "/metrics").text

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("user_registrations_total", ())] == 1.0
    assert samples[("escrow_transactions_total", (("status", "success"), ("type", "hold")))] == 2.0
    assert (
        samples[("escrow_transactions_total", (("status", "success"), ("type", "release")))] == 1.0
    )
    assert samples[("kyc_submissions_total", (("status", "pending"),))] == 1.0
    assert samples[("db_query_duration_seconds_count", (("operation", "INSERT"),))] == 5.0
    assert samples[("db_connections_active", ())] == 0.0
    route = "/api/v1/escrow/transactions"
    labels = (("endpoint", route), ("method", "POST"), ("status", "201"))
    assert samples[("http_requests_total", labels)] == 3.0
