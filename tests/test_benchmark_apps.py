"""The benchmarks measure what they say: every layer of the full stack is really on.

A benchmark of a stack whose tracing or Sentry silently failed to start would publish
flattering numbers; these tests pin the apps of benchmarks/server_apps.py (served by the
wrk throughput run) and of the harness's whole-stack row.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import sentry_sdk
from sentry_sdk.scope import Scope

from amani_observability import tracing
from benchmarks import server_apps
from tests.conftest import lifespan

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture(autouse=True)
def restore_globals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The apps set tracing's provider hook and start a Sentry client: undo both."""
    monkeypatch.setattr(tracing, "_injected_provider", None)
    yield
    sentry_sdk.get_global_scope().set_client(None)
    for scope in (
        sentry_sdk.get_global_scope(),
        Scope.get_isolation_scope(),
        Scope.get_current_scope(),
    ):
        scope.clear()


async def test_full_server_app_has_request_ids_metrics_traces_and_sentry() -> None:
    app = server_apps.build_full()
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        client_options = sentry_sdk.get_client().options
        response = await client.get("/items/7")
        scrape = await client.get("/metrics", headers={"Accept": OPENMETRICS})

    assert response.status_code == 200
    assert response.json() == {"item_id": 7}
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    # Sentry: errors only, at the closed loopback DSN.
    assert client_options["dsn"] == "http://key@127.0.0.1:9/1"
    assert client_options["traces_sample_rate"] is None
    # Metrics counted the request, and tracing sampled it: its IDs are the exemplar.
    assert (
        'http_requests_total{endpoint="/items/{item_id}",method="GET",status="200"} 1.0'
        in scrape.text
    )
    exemplars = re.findall(
        r'^http_request_duration_seconds_bucket\{endpoint="/items/\{item_id\}",le="[^"]+",'
        r'method="GET"\} 1\.0 # \{span_id="[0-9a-f]{16}",trace_id="[0-9a-f]{32}"\}',
        scrape.text,
        flags=re.M,
    )
    assert len(exemplars) == 1


async def test_bare_server_app_is_the_route_alone() -> None:
    app = server_apps.build_bare()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        response = await client.get("/items/7")
        metrics = await client.get("/metrics")

    assert response.json() == {"item_id": 7}
    assert "x-request-id" not in response.headers
    assert metrics.status_code == 404


async def test_demo_server_apps_serve_the_same_transaction_bare_and_instrumented() -> None:
    path = f"/api/v1/escrow/transactions/{server_apps.DEMO_TRANSACTION}"
    transaction = {"id": server_apps.DEMO_TRANSACTION, "type": "hold", "amount": 10.0}

    bare = server_apps.build_demo_bare()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare), base_url="http://b") as c:
        bare_response = await c.get(path)
        bare_metrics = await c.get("/metrics")
    assert bare_response.json() == transaction
    assert "x-request-id" not in bare_response.headers
    assert bare_metrics.status_code == 404

    full = server_apps.build_demo_full()
    transport = httpx.ASGITransport(app=full)
    async with lifespan(full), httpx.AsyncClient(transport=transport, base_url="http://b") as c:
        response = await c.get(path)
        scrape = await c.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.json() == transaction
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    # The whole stack (a sampled span: the exemplar) and the database metrics main.py adds.
    assert re.search(
        r'^http_request_duration_seconds_bucket\{endpoint="/api/v1/escrow/transactions/'
        r'\{transaction_id\}",le="[^"]+",method="GET"\} 1\.0 # \{span_id="[0-9a-f]{16}",',
        scrape.text,
        flags=re.M,
    )
    assert re.search(r"^db_query_duration_seconds_count\{[^}]*\} 1\.0", scrape.text, flags=re.M)
