"""The access log: one line per request, written once the request is over."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from ._asgi import ASGIApp, Message, Scope, compile_paths
from ._correlation import TraceIds
from ._pipeline import Exchange, Pipeline, RequestHooks
from ._redaction import Redactor, redactor_for

ACCESS_LOGGER = "amani_observability.access"


class AccessLog:
    """One line per request: request_id, method, url, status_code, duration_ms, client."""

    def __init__(self, *, excluded_paths: list[str], redactor: Redactor | None = None) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._excluded = compile_paths(excluded_paths)
        self._redactor = redactor or redactor_for(())

    def wants(self, scope: Scope) -> bool:
        return self.logger.isEnabledFor(logging.INFO) and not self._excluded(scope["path"])

    def emit(
        self,
        scope: Scope,
        status: int,
        duration: float,
        request_id: str | None,
        trace_ids: TraceIds | None = None,
    ) -> None:
        query = scope.get("query_string", b"")
        # Secret query parameters (`?token=...`) are redacted; no query, no cost.
        url = (
            scope["path"] + "?" + self._redactor.query(query.decode("latin-1"))
            if query
            else scope["path"]
        )
        client = scope.get("client")
        method = scope.get("method", "WEBSOCKET")
        extra: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "url": url,
            "status_code": status,
            "duration_ms": round(duration * 1000, 3),
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        if trace_ids is not None:
            extra["trace_id"], extra["span_id"] = trace_ids
        logger = self.logger
        # logger.info() would first walk the stack to find its caller (always this line):
        # build the record directly and hand it to the handlers.
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, "%s %s %d", (method, url, status), None,
            "access", extra,
        )  # fmt: skip
        logger.handle(record)


class AccessLogHooks(RequestHooks):
    """One access line per request, written once the request is over."""

    name = "access_log"

    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log

    def start(self, exchange: Exchange) -> float | None:
        if not self.access_log.wants(exchange.scope):
            return None
        return perf_counter()

    def response_started(self, exchange: Exchange, state: float, message: Message) -> None:
        # The request's span is current while the response starts: remember it for the
        # line, written after the span has ended.
        exchange.trace()

    def finish(self, exchange: Exchange, state: float) -> None:
        trace_ids = exchange.trace_ids if exchange.started else None
        self.access_log.emit(
            exchange.scope,
            exchange.status or 500,
            perf_counter() - state,
            exchange.request_id,
            trace_ids,
        )


class AccessLogMiddleware(Pipeline):
    """The access log alone, as an ASGI middleware (inside a request ID layer, for IDs)."""

    def __init__(self, app: ASGIApp, access_log: AccessLog) -> None:
        super().__init__(app, (AccessLogHooks(access_log),))
