"""The benchmarks measure what they say: every layer of the full stack is really on.

A benchmark of a stack whose tracing or Sentry silently failed to start would publish
flattering numbers; these tests pin the apps of benchmarks/server_apps.py (served by the
wrk throughput run) and of the harness's whole-stack row.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sentry_sdk
from fastapi import FastAPI
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from sentry_sdk.scope import Scope

from benchmarks import cases_stack, server_apps
from tests.conftest import lifespan

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture(autouse=True)
def restore_globals() -> Iterator[None]:
    """The apps start a Sentry client: undo it."""
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


def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


async def test_public_api_floor_does_the_whole_stacks_work_through_public_apis() -> None:
    isolation_scopes: list[Scope] = []
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        isolation_scopes.append(sentry_sdk.get_isolation_scope())
        return {"item_id": item_id}

    registry = CollectorRegistry()
    tracer_provider, exporter = memory_provider()
    floor = cases_stack.public_api_floor(app, registry=registry, tracer_provider=tracer_provider)
    outer_scope = sentry_sdk.get_isolation_scope()
    transport = httpx.ASGITransport(app=floor)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        first = await client.get("/items/7")
        second = await client.get("/items/8")

    assert (first.json(), second.json()) == ({"item_id": 7}, {"item_id": 8})
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert [str(uuid.UUID(hex=value, version=4)).replace("-", "") for value in ids] == ids
    assert ids[0] != ids[1]
    # httpx's ASGI transport gives no server port, so the floor (like ours) sets none.
    # One forked isolation scope per request, never the caller's.
    assert len({id(scope) for scope in [outer_scope, *isolation_scopes]}) == 3
    assert sentry_sdk.get_isolation_scope() is outer_scope
    spans = exporter.get_finished_spans()
    assert [(span.name, span.kind, dict(span.attributes or {})) for span in spans] == [
        (
            "GET /items/{item_id}",
            SpanKind.SERVER,
            {
                "http.request.method": "GET",
                "url.path": f"/items/{item_id}",
                "url.scheme": "http",
                "network.protocol.version": "1.1",
                "server.address": "b",
                "client.address": "127.0.0.1",
                "user_agent.original": f"python-httpx/{httpx.__version__}",
                "http.route": "/items/{item_id}",
                "http.response.status_code": 200,
            },
        )
        for item_id in (7, 8)
    ]
    labels = {"method": "GET", "endpoint": "/items/{item_id}"}
    assert registry.get_sample_value("http_requests_total", {**labels, "status": "200"}) == 2.0
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 2.0


# sentry-sdk's integrations patch Starlette process-wide: the peer stack runs in a child.
PEERS_REQUEST = """
import asyncio, json, httpx, sentry_sdk
from prometheus_client import CollectorRegistry
from benchmarks import cases_stack
from tests.test_benchmark_apps import memory_provider

registry = CollectorRegistry()
tracer_provider, exporter = memory_provider()
peers = cases_stack.peers(registry=registry, tracer_provider=tracer_provider)
integrations = []

async def app(scope, receive, send):
    async def sending(message):
        # Read while the peers' Sentry client is current: inside their app.
        integrations.append(sorted(sentry_sdk.get_client().integrations))
        await send(message)
    await peers(scope, receive, sending)

async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        response = await client.get("/items/7")
    labels = {"handler": "/items/{item_id}", "method": "GET", "status": "2xx"}
    print(json.dumps({
        "body": response.json(),
        "request id": response.headers["x-request-id"],
        "server spans": [s.name for s in exporter.get_finished_spans() if s.kind.name == "SERVER"],
        "requests counted": registry.get_sample_value("http_requests_total", labels),
        "sentry integrations": integrations[0],
    }))

asyncio.run(main())
"""


# The peers come with the `bench` extra only: `make bench` runs this test before it measures.
@pytest.mark.bench
def test_peers_server_app_has_all_four_peer_libraries_on() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PEERS_REQUEST],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    seen = json.loads(result.stdout.strip().splitlines()[-1])

    assert re.fullmatch(r"[0-9a-f]{32}", seen.pop("request id"))
    assert {"fastapi", "starlette"} <= set(seen.pop("sentry integrations"))
    assert seen == {
        "body": {"item_id": 7},
        "server spans": ["GET /items/{item_id}"],
        "requests counted": 1.0,
    }
