"""Request IDs: reuse a safe incoming ID or mint one, echo it on every response.

The hooks run outermost, outside Starlette's ServerErrorMiddleware, so even the 500
produced by an unhandled exception carries the header (asgi-correlation-id #19).
"""

from __future__ import annotations

from typing import Any

from ._asgi import ASGIApp
from ._correlation import request_id_var
from ._pipeline import Pipeline
from ._request_ids import RequestIDHooks, new_request_id

__all__ = ["RequestIDMiddleware", "current_request_id", "get_request_id", "new_request_id"]


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


class RequestIDMiddleware(Pipeline):
    """Request IDs alone, as an ASGI middleware: `instrument()` runs the same hooks with
    the other concerns in one layer."""

    def __init__(self, app: ASGIApp, *, header: str = "X-Request-ID") -> None:
        super().__init__(app, (RequestIDHooks(header),))
