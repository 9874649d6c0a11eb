"""Under concurrency every response and log line carries exactly its own request ID."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amani_observability import ObservabilitySettings, configure_logging, get_request_id, instrument

REQUESTS = 500


async def test_500_concurrent_requests_keep_their_own_ids() -> None:
    stream = io.StringIO()
    log = logging.getLogger("app.concurrency")

    async def handler(request: Request) -> PlainTextResponse:
        n = request.path_params["n"]
        log.info("before %s", n)
        await asyncio.sleep(0.001 * (int(n) % 7))  # interleave the requests
        log.info("after %s", n)
        return PlainTextResponse(get_request_id(request) or "")

    app = instrument(
        Starlette(routes=[Route("/work/{n}", handler)]),
        ObservabilitySettings(metrics_enabled=False),
    )
    configure_logging(ObservabilitySettings(), stream=stream)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        responses = await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.get(f"/work/{n}", headers={"X-Request-ID": f"id-{n}"})
                    for n in range(REQUESTS)
                )
            ),
            timeout=60,
        )
    for n, response in enumerate(responses):
        assert response.headers["x-request-id"] == f"id-{n}"
        assert response.text == f"id-{n}"

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    app_entries = [e for e in entries if e["logger"] == "app.concurrency"]
    access_entries = [e for e in entries if e["logger"] == "amani_observability.access"]
    assert len(app_entries) == 2 * REQUESTS
    assert len(access_entries) == REQUESTS
    for entry in app_entries:
        assert entry["request_id"] == "id-" + entry["message"].split()[1]
    for entry in access_entries:
        assert entry["request_id"] == "id-" + entry["url"].rsplit("/", 1)[1]
