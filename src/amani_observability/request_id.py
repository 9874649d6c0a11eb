"""Request IDs: reuse a safe incoming ID or mint one, echo it on every response.

The middleware sits outermost, outside Starlette's ServerErrorMiddleware, so even
the 500 produced by an unhandled exception carries the header (asgi-correlation-id
#19). It also writes the access log line, since it is the layer that sees the whole
request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from contextvars import ContextVar
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from ._asgi import ASGIApp, Message, Receive, Scope, Send
from ._correlation import TraceIds, current_trace_ids

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .logs import AccessLog

logger = logging.getLogger("amani_observability.request_id")

# Logged when incoming IDs are refused, at most once per REJECTED_LOG_INTERVAL seconds,
# with how many were refused since the last such line and the ID given to the latest.
# The rejected value is never logged: it is attacker-controlled and may carry CR/LF or
# terminal escapes.
REJECTED_REQUEST_ID = (
    "Ignored %d invalid incoming request ID header(s) and generated new IDs; "
    "the latest request got %s"
)
REJECTED_LOG_INTERVAL = 60.0
# Logged when the application returned without sending a response.
NO_RESPONSE = "The application returned without sending a response; answered 500"

# UUIDs with or without dashes, nginx's $request_id, W3C trace ids, ULIDs all pass.
_accept = re.compile(rb"[A-Za-z0-9._-]{1,128}").fullmatch

_random_bits = random.getrandbits

# The ID of the request this context is handling (set by the middlewares, read by logs).
request_id_var: ContextVar[str | None] = ContextVar("amani_request_id", default=None)

_INTERNAL_ERROR_BODY = b"Internal Server Error"


# IDs are drawn 64 at a time: one 8192-bit number, formatted once and sliced, is
# cheaper than formatting each ID alone (docs/performance.md). A forked
# worker drops the IDs it inherited, so that no two workers hand out the same ones.
_IDS_PER_DRAW = 64
_drawn_ids: list[str] = []
_next_drawn_id = _drawn_ids.pop


def _draw_ids() -> str:
    """Refill the drawn IDs and return one more."""
    digits = f"{_random_bits(128 * _IDS_PER_DRAW):0{32 * _IDS_PER_DRAW}x}"
    _drawn_ids.extend([digits[i : i + 32] for i in range(32, 32 * _IDS_PER_DRAW, 32)])
    return digits[:32]


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_drawn_ids.clear)


def new_request_id() -> str:
    """32 random hex digits (128 bits): a valid W3C trace id too.

    From `random`, like OpenTelemetry's trace ids: a request ID correlates, it guards
    nothing, and `os.urandom()` costs a system call per request. `random` is reseeded in
    each forked worker, and the IDs drawn before the fork are dropped there, so workers
    never repeat each other's IDs.
    """
    try:
        return _next_drawn_id()
    except IndexError:  # none left (the list's pop is atomic: safe from any thread)
        return _draw_ids()


def get_request_id(request: Any = None) -> str | None:
    """The current request's ID.

    With a Starlette/FastAPI `Request` (the guide's call), read it from the request;
    without one, from the context, which also works in background tasks and in
    code that has no request object at hand. None outside a request.
    """
    if request is not None:
        state = request.scope.get("state")
        if state is not None:
            value = state.get("request_id")
            if value is not None:
                return str(value)
    return request_id_var.get()


def current_request_id() -> str | None:
    """The request ID of the request being handled in this context, or None."""
    return request_id_var.get()


def assign_request_id(scope: Scope, header: bytes) -> tuple[str, bytes]:
    """The request's ID, as text and as bytes: the incoming `header` when it is safe,
    else a new one. Kept in `scope["state"]` for `get_request_id(request)`.

    One function for the look-up and the check: it runs on every request, and each
    Python call saved is a few hundred instructions.
    """
    for key, value in scope.get("headers", ()):
        if key == header:
            request_id, id_bytes = _checked_incoming_id(value)
            break
    else:
        request_id = new_request_id()
        id_bytes = request_id.encode("ascii")
    state = scope.get("state")
    if state is None:
        scope["state"] = {"request_id": request_id}
    else:
        state["request_id"] = request_id
    return request_id, id_bytes


class RejectedIDs:
    """Counts refused incoming IDs and logs them at most once per interval: a client
    sending a bad header on every request must not write a line per request."""

    def __init__(self, interval: float = REJECTED_LOG_INTERVAL) -> None:
        self.interval = interval
        self.unlogged = 0
        self.logged_at = -interval

    def note(self, replacement: str) -> None:
        self.unlogged += 1
        now = monotonic()
        if now - self.logged_at >= self.interval:
            self.logged_at = now
            count, self.unlogged = self.unlogged, 0
            logger.warning(REJECTED_REQUEST_ID, count, replacement)


_rejected = RejectedIDs()


def _checked_incoming_id(value: bytes) -> tuple[str, bytes]:
    incoming = bytes(value)
    if _accept(incoming):
        return incoming.decode("ascii"), incoming
    request_id = new_request_id()
    _rejected.note(request_id)
    return request_id, request_id.encode("ascii")


class RequestIDMiddleware:
    """Give every HTTP request and websocket connection an ID, and echo it back."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "X-Request-ID",
        access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            # Lifespan and future scope types are none of our business.
            await self.app(scope, receive, send)
            return

        request_id, id_bytes = assign_request_id(scope, self.header)
        header_pair = (self.header, id_bytes)

        access_log = self.access_log
        started = 0.0
        if access_log is not None:
            if access_log.wants(scope):
                started = perf_counter()
            else:
                access_log = None
        status = 0  # the response's status once it has started; 0 until then
        trace_ids: TraceIds | None = None

        # A plain function handing back the server's own awaitable: nothing is left to do
        # after the send, so no coroutine of ours per message.
        def send_with_request_id(message: Message) -> Awaitable[None]:
            nonlocal status, trace_ids
            message_type = message["type"]
            if message_type == "http.response.start" or message_type == "websocket.accept":
                # A second start is refused by the server; the first is what the client got.
                status = status or message.get("status", 101)
                message["headers"] = [*message.get("headers", ()), header_pair]
                if access_log is not None:
                    # The server span is current while inner layers send: remember it for
                    # the access line, written after the span has ended.
                    trace_ids = current_trace_ids()
            return send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            tag_exception(exc, request_id)
            if status == 0:
                status = 500
                if scope_type == "http":
                    # A bare ASGI app raised before responding: answer the 500 ourselves
                    # so it carries the ID, then re-raise so the server logs the error.
                    await send_internal_error(send, header_pair)
            raise
        else:
            if status == 0 and scope_type == "http":
                status = 500
                await answer_missing_response(send, header_pair)
        finally:
            if access_log is not None:
                access_log.emit(scope, status, perf_counter() - started, request_id, trace_ids)
            request_id_var.reset(token)


def tag_exception(exc: BaseException, request_id: str) -> None:
    """Name the request on an escaping exception: the server logs it after our context is
    gone, and the JSON log filter reads the ID from here so that line names its request."""
    with contextlib.suppress(AttributeError):
        exc.amani_request_id = request_id  # type: ignore[attr-defined]


async def answer_missing_response(send: Send, header_pair: tuple[bytes, bytes]) -> None:
    """The app returned without responding: answer the 500 the server would have sent,
    but carrying the request ID, and say so (the server logs nothing once we answered)."""
    logger.error(NO_RESPONSE)
    await send_internal_error(send, header_pair)


async def send_internal_error(send: Send, header_pair: tuple[bytes, bytes]) -> None:
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_INTERNAL_ERROR_BODY)).encode()),
                    header_pair,
                ],
            }
        )
        await send({"type": "http.response.body", "body": _INTERNAL_ERROR_BODY})
    except Exception:  # the client went away; the original error matters more
        logger.debug("could not send the 500 response", exc_info=True)
