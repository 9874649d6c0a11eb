"""RequestIDMiddleware and get_request_id(): validation, echo, context, errors."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from amani_observability import _request_ids as request_id_module
from amani_observability import get_request_id
from amani_observability._pipeline import NO_RESPONSE
from amani_observability._request_ids import REJECTED_REQUEST_ID, RejectedIDs
from amani_observability.logs import RequestContextFilter
from amani_observability.request_id import (
    RequestIDMiddleware,
    current_request_id,
    new_request_id,
)
from tests.support import call_asgi, http_scope, response_headers

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def fresh_rejection_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no rejected IDs counted and none logged recently."""
    monkeypatch.setattr(request_id_module, "_rejected", RejectedIDs())


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = (current_request_id() or "").encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    "incoming",
    [
        "550e8400-e29b-41d4-a716-446655440000",
        "550e8400e29b41d4a716446655440000",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "01HZX3T4C8Q9Z7W0KJ5M2N6P8R",
        "req.2024_01-x",
        "a",
        "a" * 128,
    ],
)
async def test_a_safe_incoming_id_is_reused(incoming: str) -> None:
    app = RequestIDMiddleware(echo_app)
    messages = await call_asgi(app, http_scope(headers=[("X-Request-ID", incoming)]))
    assert response_headers(messages)["x-request-id"] == incoming
    assert messages[1]["body"] == incoming.encode()


@pytest.mark.parametrize(
    "incoming",
    [
        "",
        "a" * 129,
        "abc\r\nSet-Cookie: x=1",
        "has space",
        'quote"d',
        "ünïcode",
        "semi;colon",
        "<script>",
    ],
)
async def test_an_unsafe_incoming_id_is_replaced_and_not_logged(
    incoming: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = RequestIDMiddleware(echo_app)
    scope = http_scope()
    scope["headers"] = [(b"x-request-id", incoming.encode("utf-8"))]
    with caplog.at_level(logging.WARNING, logger="amani_observability.request_id"):
        messages = await call_asgi(app, scope)
    returned = response_headers(messages)["x-request-id"]
    assert GENERATED.fullmatch(returned)
    assert [r.getMessage() for r in caplog.records] == [REJECTED_REQUEST_ID % (1, returned)]
    if incoming:
        assert incoming not in caplog.text


async def test_a_missing_id_is_generated_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RequestIDMiddleware(echo_app)
    with caplog.at_level(logging.WARNING):
        messages = await call_asgi(app, http_scope())
    assert GENERATED.fullmatch(response_headers(messages)["x-request-id"])
    assert caplog.records == []


async def test_the_apps_own_headers_are_kept() -> None:
    messages = await call_asgi(RequestIDMiddleware(echo_app), http_scope())
    assert response_headers(messages)["x-app"] == "1"


async def test_a_custom_header_name_is_used_both_ways() -> None:
    app = RequestIDMiddleware(echo_app, header="X-Correlation-ID")
    messages = await call_asgi(app, http_scope(headers=[("X-Correlation-ID", "corr-1")]))
    headers = response_headers(messages)
    assert headers["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in headers


def test_new_request_ids_are_distinct_hex() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(GENERATED.fullmatch(i) for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_worker_does_not_reuse_ids_drawn_before_the_fork() -> None:
    request_id_module._drawn_ids.clear()
    new_request_id()
    assert len(request_id_module._drawn_ids) == 63  # drawn, not yet handed out
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads; this child runs
        # no code that takes a lock.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its next IDs, then leave without cleanup
        try:
            os.write(write_end, " ".join(new_request_id() for _ in range(70)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read().split()
    os.waitpid(pid, 0)
    parent_ids = [new_request_id() for _ in range(70)]
    assert len(child_ids) == 70
    assert all(GENERATED.fullmatch(i) for i in child_ids)
    assert set(child_ids).isdisjoint(parent_ids)


def test_ids_handed_out_from_many_threads_are_all_distinct() -> None:
    def draw(_: int) -> list[str]:
        return [new_request_id() for _ in range(500)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = [i for batch in pool.map(draw, range(8)) for i in batch]
    assert len(set(ids)) == 4000


async def test_context_is_reset_after_the_request() -> None:
    await call_asgi(RequestIDMiddleware(echo_app), http_scope(headers=[("X-Request-ID", "one")]))
    assert current_request_id() is None


async def test_lifespan_and_unknown_scopes_pass_through_untouched() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, send))

    middleware = RequestIDMiddleware(app)

    async def send(message: Any) -> None:
        return None

    for scope_type in ("lifespan", "custom-protocol"):
        scope = {"type": scope_type}
        await middleware(scope, None, send)  # type: ignore[arg-type]
        assert seen[-1] == ({"type": scope_type}, send)


async def test_a_bare_asgi_app_that_raises_still_answers_500_with_the_id() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("boom")

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    with pytest.raises(KeyError, match="boom"):
        await RequestIDMiddleware(broken)(
            http_scope(headers=[("X-Request-ID", "err-1")]),
            None,
            send,  # type: ignore[arg-type]
        )
    assert sent[0]["status"] == 500
    assert (b"x-request-id", b"err-1") in sent[0]["headers"]
    assert sent[1]["body"] == b"Internal Server Error"


def _starlette_app() -> Starlette:
    async def homepage(request: Request) -> JSONResponse:
        return JSONResponse({"id": get_request_id(request), "ctx": get_request_id()})

    async def boom(request: Request) -> None:
        raise RuntimeError("boom")

    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(get_request_id() or "")
        await ws.close()

    return Starlette(
        routes=[
            Route("/", homepage),
            Route("/boom", boom),
            WebSocketRoute("/ws", websocket),
        ]
    )


async def test_starlette_404_and_unhandled_500_carry_the_id() -> None:
    from amani_observability import instrument

    app = instrument(_starlette_app())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get("/", headers={"X-Request-ID": "ok-1"})
        missing = await client.get("/nowhere", headers={"X-Request-ID": "nf-1"})
        failed = await client.get("/boom", headers={"X-Request-ID": "err-1"})
    assert ok.json() == {"id": "ok-1", "ctx": "ok-1"}
    assert (missing.status_code, missing.headers["x-request-id"]) == (404, "nf-1")
    assert (failed.status_code, failed.headers["x-request-id"]) == (500, "err-1")


async def test_websocket_connections_get_an_id() -> None:
    from amani_observability import instrument

    app = instrument(_starlette_app())
    incoming = [{"type": "websocket.connect"}]
    sent: list[Any] = []

    async def receive() -> Any:
        if incoming:
            return incoming.pop()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = http_scope("/ws", headers=[("X-Request-ID", "ws-1")], type="websocket", scheme="ws")
    del scope["method"]
    await app(scope, receive, send)
    assert sent[0]["type"] == "websocket.accept"
    assert (b"x-request-id", b"ws-1") in sent[0]["headers"]
    assert sent[1] == {"type": "websocket.send", "text": "ws-1"}


async def test_background_tasks_see_the_id_and_nothing_leaks_after() -> None:
    from amani_observability import instrument

    seen: list[str | None] = []

    async def record() -> None:
        await asyncio.sleep(0)
        seen.append(get_request_id())

    async def homepage(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(record))

    app = instrument(Starlette(routes=[Route("/", homepage)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/", headers={"X-Request-ID": "bg-1"})
        await client.get("/", headers={"X-Request-ID": "bg-2"})
    assert seen == ["bg-1", "bg-2"]
    assert get_request_id() is None


async def test_rejected_ids_are_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 bad headers in a minute make one line; the next minute's line counts the rest
    and names the ID the latest request was given."""
    clock = [1000.0]
    monkeypatch.setattr(request_id_module, "monotonic", lambda: clock[0])
    app = RequestIDMiddleware(echo_app)
    bad = http_scope(headers=[("X-Request-ID", "bad id")])
    returned = []
    with caplog.at_level(logging.WARNING, logger="amani_observability.request_id"):
        for _ in range(5000):
            messages = await call_asgi(app, dict(bad))
            returned.append(response_headers(messages)["x-request-id"])
        clock[0] += 59.9
        messages = await call_asgi(app, dict(bad))
        returned.append(response_headers(messages)["x-request-id"])
        clock[0] += 0.1
        messages = await call_asgi(app, dict(bad))
        returned.append(response_headers(messages)["x-request-id"])
    assert [r.getMessage() for r in caplog.records] == [
        REJECTED_REQUEST_ID % (1, returned[0]),
        REJECTED_REQUEST_ID % (5001, returned[-1]),
    ]


async def test_an_app_that_returns_without_responding_gets_a_500_with_the_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def silent_app(scope: Any, receive: Any, send: Any) -> None:
        return None

    caplog.handler.addFilter(RequestContextFilter())
    with caplog.at_level(logging.ERROR, logger="amani_observability.request_id"):
        messages = await call_asgi(
            RequestIDMiddleware(silent_app), http_scope(headers=[("X-Request-ID", "req-9")])
        )
    assert messages == [
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"21"),
                (b"x-request-id", b"req-9"),
            ],
        },
        {"type": "http.response.body", "body": b"Internal Server Error"},
    ]
    assert [(r.getMessage(), r.request_id) for r in caplog.records] == [(NO_RESPONSE, "req-9")]
