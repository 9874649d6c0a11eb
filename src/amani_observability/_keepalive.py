"""Sending the last body outside the request's context variables.

uvicorn arms a connection's keep-alive timer inside `send()` of the final body, and
asyncio copies the current context into the timer's handle. With our values still set,
that copy keeps the request's Sentry scopes (and, through their event processor, the
ASGI scope) and its OpenTelemetry context alive until the connection's next request.
Under load that is a few dozen young objects per open connection, enough to make
CPython's young-generation collector run every few requests and promote them to the
old generations (the cost is in docs/performance.md). So that one `send()` runs in a
copy of the context taken before the request set anything, and the request's own
context is untouched for what follows (background tasks).
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Generator
from contextvars import Context
from typing import Any

from ._asgi import Message

_Coroutine = types.CoroutineType


@types.coroutine
def awaited_in(context: Context, awaitable: Awaitable[Any]) -> Generator[Any, Any, Any]:
    """Await `awaitable` with each of its steps run in `context`, as a task of its own
    would run them, but without the task: the event loop sees the futures it waits on.

    Entering a context is a pointer swap; setting and resetting each variable instead
    would build a new context mapping every time.
    """
    iterator: Any = awaitable if type(awaitable) is _Coroutine else _delegating(awaitable)
    run = context.run
    step, value = iterator.send, None
    while True:
        try:
            waited = run(step, value)
        except StopIteration as stop:
            return stop.value
        try:
            value = yield waited
            step = iterator.send
        except GeneratorExit:
            run(iterator.close)
            raise
        except BaseException as exc:  # cancellation included: the awaitable decides
            step, value = iterator.throw, exc


def _delegating(awaitable: Awaitable[Any]) -> Generator[Any, Any, Any]:
    """Any other awaitable as a generator: send(), throw() and close() as `await` has them."""
    return (yield from awaitable.__await__())


def is_final_body(message: Message) -> bool:
    """Whether `message` ends the response (the send that arms the keep-alive timer)."""
    message_type = message["type"]
    return (
        message_type == "http.response.body" and not message.get("more_body", False)
    ) or message_type == "http.response.pathsend"
