"""Request IDs: minting, checking incoming ones, and the hooks that give each request one."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from time import monotonic
from typing import TYPE_CHECKING

from ._asgi import Message, Scope
from ._correlation import request_id_var
from ._pipeline import Exchange, RequestHooks

if TYPE_CHECKING:
    from contextvars import Token

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

# UUIDs with or without dashes, nginx's $request_id, W3C trace ids, ULIDs all pass.
_accept = re.compile(rb"[A-Za-z0-9._-]{1,128}").fullmatch

_random_bits = random.getrandbits


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


def assign_request_id(scope: Scope, header: bytes) -> tuple[str, bytes]:
    """The request's ID, as text and as bytes: the incoming `header` when it is safe,
    else a new one. Kept in `scope["state"]` for `get_request_id(request)`.

    One function for the look-up and the check: it runs on every request.
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


class RequestIDHooks(RequestHooks):
    """Give every HTTP request and websocket connection an ID, and echo it back."""

    name = "request_id"

    def __init__(self, header: str = "X-Request-ID") -> None:
        self.header = header.lower().encode("latin-1")

    def start(self, exchange: Exchange) -> tuple[Token[str | None], tuple[bytes, bytes]]:
        request_id, id_bytes = assign_request_id(exchange.scope, self.header)
        exchange.request_id = request_id
        header_pair = (self.header, id_bytes)
        # Even the pipeline's own 500 (an app that raised before responding) carries it.
        exchange.error_response_header = header_pair
        return request_id_var.set(request_id), header_pair

    def response_started(
        self,
        exchange: Exchange,
        state: tuple[Token[str | None], tuple[bytes, bytes]],
        message: Message,
    ) -> None:
        if message["type"] != "websocket.http.response.start":
            message["headers"] = [*message.get("headers", ()), state[1]]

    def failed(self, exchange: Exchange, state: object, error: Exception) -> None:
        if exchange.request_id is not None:
            tag_exception(error, exchange.request_id)

    def finish(
        self, exchange: Exchange, state: tuple[Token[str | None], tuple[bytes, bytes]]
    ) -> None:
        request_id_var.reset(state[0])


def tag_exception(exc: BaseException, request_id: str) -> None:
    """Name the request on an escaping exception: the server logs it after our context is
    gone, and the JSON log filter reads the ID from here so that line names its request."""
    with contextlib.suppress(AttributeError):
        exc.amani_request_id = request_id  # type: ignore[attr-defined]
