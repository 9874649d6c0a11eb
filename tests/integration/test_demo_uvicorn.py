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
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "demo-err-1" not in server.output():
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
