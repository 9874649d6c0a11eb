"""Every feature without FastAPI: a Starlette-only service and a bare ASGI callable.

Runs in a fresh interpreter in which importing FastAPI fails, as in a service that does not
have it installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.sentry_stand_in import SentryStandIn

REPOSITORY = Path(__file__).resolve().parent.parent

WITHOUT_FASTAPI = """
import asyncio, importlib.abc, json, sys

class NoFastAPI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fastapi" or name.startswith("fastapi."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoFastAPI())
sys.path.insert(0, sys.argv[2])

import httpx, sentry_sdk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from amani_observability import ObservabilitySettings, instrument
from tests.conftest import lifespan

memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))

async def hello(request):
    sentry_sdk.capture_message("starlette")
    return PlainTextResponse("hello")

async def bare(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        while message["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    sentry_sdk.capture_message("bare")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"bare"})

settings = ObservabilitySettings(
    sentry_dsn=sys.argv[1], tracing_enabled=True, tracing_exporter="none", log_json=False
)
apps = {
    "starlette": instrument(
        Starlette(routes=[Mount("/orgs/{org}", routes=[Route("/hello/{who}", hello)])]),
        settings,
        tracer_provider=provider,
    ),
    "bare": instrument(bare, settings, tracer_provider=provider),
}
paths = {"starlette": "/orgs/acme/hello/bob", "bare": "/anything/7"}

async def main():
    answers = {}
    for name, app in apps.items():
        transport = httpx.ASGITransport(app=app)
        async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            response = await c.get(paths[name], headers={"X-Request-ID": f"req-{name}"})
        answers[name] = [response.status_code, response.headers["x-request-id"]]
    sentry_sdk.flush(timeout=10)
    return answers

answers = asyncio.run(main())
print(json.dumps({
    "fastapi imported": any(m.split(".")[0] == "fastapi" for m in sys.modules),
    "responses": answers,
    "spans": sorted(span.name for span in memory.get_finished_spans()),
    "requests": sorted(
        [s.labels["endpoint"], s.value]
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == "http_requests_total"
    ),
}))
"""


def test_a_starlette_app_and_a_bare_asgi_app_get_every_feature_without_fastapi() -> None:
    """Request IDs, metrics, tracing and Sentry, with FastAPI impossible to import."""
    with SentryStandIn() as sentry_server:
        completed = subprocess.run(
            [sys.executable, "-c", WITHOUT_FASTAPI, sentry_server.dsn, str(REPOSITORY)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        events = sentry_server.events()

    assert json.loads(completed.stdout) == {
        "fastapi imported": False,
        "responses": {"starlette": [200, "req-starlette"], "bare": [200, "req-bare"]},
        "spans": ["GET", "GET /orgs/{org}/hello/{who}"],
        "requests": [["/orgs/{org}/hello/{who}", 1.0], ["<unmatched>", 1.0]],
    }
    assert sorted(
        (e["message"], e["tags"]["request_id"], e["tags"]["endpoint"], e["transaction"])
        for e in events
    ) == [
        ("bare", "req-bare", "<unmatched>", "<unmatched>"),
        ("starlette", "req-starlette", "/orgs/{org}/hello/{who}", "/orgs/{org}/hello/{who}"),
    ]
