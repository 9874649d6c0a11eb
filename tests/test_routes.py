"""Route templates from the router itself: one per kind of route, on every supported Starlette.

Each request's `endpoint` label, span name and Sentry transaction come from the same
template; on Starlette < 1.7 (no scope["route"]) it is found through the app's route table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from amani_observability import ObservabilitySettings, instrument
from amani_observability.metrics._middleware import ENDPOINTS_OVERFLOW, OVERFLOW_ROUTE
from tests.conftest import lifespan
from tests.sentry_stand_in import SentryStandIn
from tests.support import call_asgi, http_scope


async def reply(request: Request) -> PlainTextResponse:
    # Every handled request sends one Sentry event: its tags name the endpoint.
    sentry_sdk.capture_message(request.url.path)
    return PlainTextResponse("ok")


def build_app(static_dir: Path) -> FastAPI:
    """One app with every kind of route a service has."""
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        sentry_sdk.capture_message("item")
        return {"item_id": item_id}

    users = APIRouter()

    @users.get("/users/{uid}")
    async def user(uid: int) -> dict[str, int]:
        sentry_sdk.capture_message("user")
        return {"uid": uid}

    app.include_router(users, prefix="/v1/{org}")
    app.add_route("/plain/{name}", reply)
    app.router.routes.append(WebSocketRoute("/ws/{room}", echo))
    app.mount("/orgs/{org}", Router(routes=[Route("/projects/{pid}", reply)]))
    app.mount("/v2", Router(routes=[Mount("/teams/{team}", routes=[Route("/members", reply)])]))
    app.mount("/sub/{tenant}", Starlette(routes=[Route("/hello/{who}", reply)]))
    things = FastAPI(telemetry={"tracing": False})
    things.add_api_route("/things/{tid}", reply_api)
    app.mount("/api2", things)
    app.mount("/static", StaticFiles(directory=static_dir))
    app.host("api.example.org", Router(routes=[Route("/status", reply)]))
    return app


async def reply_api(tid: int) -> dict[str, int]:
    sentry_sdk.capture_message("thing")
    return {"tid": tid}


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(websocket.path_params["room"])
    await websocket.close()


# (path, headers, the route template, whether the handler sends a Sentry event)
ROUTE_KINDS = {
    "APIRoute": ("/items/7", (), "/items/{item_id}", True),
    "include_router with a prefix": ("/v1/acme/users/5", (), "/v1/{org}/users/{uid}", True),
    "Route": ("/plain/x", (), "/plain/{name}", True),
    "Mount with parameters": ("/orgs/acme/projects/9", (), "/orgs/{org}/projects/{pid}", True),
    "nested Mount": ("/v2/teams/red/members", (), "/v2/teams/{team}/members", True),
    "Mount of a Starlette app": ("/sub/t1/hello/bob", (), "/sub/{tenant}/hello/{who}", True),
    "Mount of a FastAPI app": ("/api2/things/3", (), "/api2/things/{tid}", True),
    "Host": ("/status", (("host", "api.example.org"),), "/status", True),
    "StaticFiles": ("/static/a.txt", (), "/static/{path}", False),
    "StaticFiles, deeper": ("/static/css/b.css", (), "/static/{path}", False),
    "/docs": ("/docs", (), "/docs", False),
    "/docs/oauth2-redirect": ("/docs/oauth2-redirect", (), "/docs/oauth2-redirect", False),
    "/redoc": ("/redoc", (), "/redoc", False),
    "/openapi.json": ("/openapi.json", (), "/openapi.json", False),
}


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    (tmp_path / "css").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "css" / "b.css").write_text("b")
    return tmp_path


def settings(**values: Any) -> ObservabilitySettings:
    return ObservabilitySettings(
        **{"tracing_enabled": True, "tracing_exporter": "none", "log_json": False, **values}
    )


def requests_total() -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["method"], s.labels["endpoint"], s.labels["status"]): s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == "http_requests_total"
    }


@pytest.mark.parametrize("kind", list(ROUTE_KINDS))
async def test_each_kind_of_route_is_labelled_and_named_by_its_full_template(
    kind: str,
    static_dir: Path,
    exporter: InMemorySpanExporter,
    sentry_server: SentryStandIn,
) -> None:
    path, headers, template, sends_event = ROUTE_KINDS[kind]
    app = instrument(
        build_app(static_dir),
        settings(sentry_dsn=sentry_server.dsn),
        tracer_provider=exporter.provider,
    )
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.get(path, headers=dict(headers))
    sentry_sdk.flush(timeout=10)

    assert response.status_code == 200
    assert requests_total() == {("GET", template, "200"): 1.0}
    [span] = exporter.get_finished_spans()
    assert (span.name, span.attributes["http.route"]) == (f"GET {template}", template)  # type: ignore[index]
    events = sentry_server.events()
    assert [(e["tags"]["endpoint"], e["transaction"]) for e in events] == (
        [(template, template)] if sends_event else []
    )


async def test_a_path_no_route_matches_is_unmatched_and_named_by_its_method(
    static_dir: Path, exporter: InMemorySpanExporter
) -> None:
    app = instrument(build_app(static_dir), settings(), tracer_provider=exporter.provider)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.get("/nowhere/1")

    assert response.status_code == 404
    assert requests_total() == {("GET", "<unmatched>", "404"): 1.0}
    [span] = exporter.get_finished_spans()
    assert (span.name, "http.route" in (span.attributes or {})) == ("GET", False)


async def test_a_websocket_route_names_its_span_by_its_template(
    static_dir: Path, exporter: InMemorySpanExporter
) -> None:
    app = instrument(build_app(static_dir), settings(), tracer_provider=exporter.provider)
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {**http_scope("/ws/lobby"), "type": "websocket", "scheme": "ws"}
    async with lifespan(app):
        await app(scope, receive, send)

    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    [span] = exporter.get_finished_spans()
    assert (span.name, span.attributes["http.route"]) == ("GET /ws/{room}", "/ws/{room}")  # type: ignore[index]


def starlette_app() -> Starlette:
    return Starlette(routes=[Mount("/orgs/{org}", routes=[Route("/projects/{pid}", reply)])])


async def test_ten_thousand_mount_parameter_values_leave_the_series_count_unchanged() -> None:
    app = instrument(
        starlette_app(),
        ObservabilitySettings(log_json=False, request_id_enabled=False, access_log_enabled=False),
    )
    async with lifespan(app):
        await call_asgi(app, http_scope("/orgs/first/projects/1"))
        before = requests_total()
        deadline = time.monotonic() + 120
        for n in range(10_000):  # bounded in count and in time
            assert time.monotonic() < deadline, f"only {n} requests in 120 s"
            await call_asgi(app, http_scope(f"/orgs/org-{n}/projects/{n}"))

    assert before == {("GET", "/orgs/{org}/projects/{pid}", "200"): 1.0}
    assert requests_total() == {("GET", "/orgs/{org}/projects/{pid}", "200"): 10_001.0}


async def test_endpoints_beyond_the_cap_share_the_overflow_label_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Starlette(routes=[Route(f"/r{n}", reply) for n in range(5)])
    app = instrument(
        app,
        ObservabilitySettings(log_json=False, access_log_enabled=False, metrics_max_endpoints=2),
    )
    caplog.set_level(logging.WARNING)
    async with lifespan(app):
        for n in [0, 1, 2, 3, 4, 0, 3]:
            await call_asgi(app, http_scope(f"/r{n}"))

    assert requests_total() == {
        ("GET", "/r0", "200"): 2.0,
        ("GET", "/r1", "200"): 1.0,
        ("GET", OVERFLOW_ROUTE, "200"): 4.0,
    }
    assert [(r.name, r.msg, r.args) for r in caplog.records] == [
        ("amani_observability.metrics", ENDPOINTS_OVERFLOW, (2, OVERFLOW_ROUTE))
    ]
