"""Stepping out of the request's context variables while the server sends the last body.

uvicorn arms a connection's keep-alive timer inside `send()` of the final body, and
asyncio copies the current context into the timer's handle. With our values still set,
that copy keeps the request's Sentry scopes (and, through their event processor, the
ASGI scope) and its OpenTelemetry context alive until the connection's next request.
Under load that is a few dozen young objects per open connection, enough to make
CPython's young-generation collector run every few requests and promote them to the
old generations: about 25 us of GC a request at 2,500 req/s (measured; see
docs/performance.md). So around that one `send()` our variables hold what they held
before the request, and afterwards the request's own values again, for background tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import Context, ContextVar, Token
from typing import Any

from ._asgi import Message, Send

_MISSING = Token.MISSING
_NO_DEFAULT = object()
_defaults: dict[ContextVar[Any], Any] = {}


def _default(var: ContextVar[Any]) -> Any:
    """The value `var` has where it was never set (looked up once per variable)."""
    try:
        return _defaults[var]
    except KeyError:
        try:
            value = Context().run(var.get)
        except LookupError:
            value = _NO_DEFAULT
        _defaults[var] = value
        return value


def step_out(tokens: Iterable[object]) -> list[Token[Any]]:
    """Give each token's variable its value from before the token's `set()`.

    `tokens` are what the request's `ContextVar.set()` calls returned; anything else in
    it (OpenTelemetry's token under a non-default runtime context) is left alone. Returns
    the tokens that step_back() needs; both must run in the same context.
    """
    outside: list[Token[Any]] = []
    for token in tokens:
        if type(token) is not Token:
            continue
        value = token.old_value
        if value is _MISSING:
            value = _default(token.var)
            if value is _NO_DEFAULT:
                continue  # an unset variable without a default cannot be recreated
        outside.append(token.var.set(value))
    return outside


def step_back(outside: list[Token[Any]]) -> None:
    """Give the variables the request's values again."""
    for token in reversed(outside):
        token.var.reset(token)


def is_final_body(message: Message) -> bool:
    """Whether `message` ends the response (the send that arms the keep-alive timer)."""
    message_type = message["type"]
    return (
        message_type == "http.response.body" and not message.get("more_body", False)
    ) or message_type == "http.response.pathsend"


def sending_outside(send: Send, tokens: Sequence[object]) -> Send:
    """`send`, with the final body sent outside the request's values (see above)."""

    async def send_outside(message: Message) -> None:
        if not is_final_body(message):
            await send(message)
            return
        outside = step_out(tokens)
        try:
            await send(message)
        finally:
            step_back(outside)

    return send_outside
