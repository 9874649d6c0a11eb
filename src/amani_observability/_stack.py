"""The per-request stack in one ASGI layer: what instrument() puts in front of the app.

instrument() composes four middlewares (request ID, tracing, Sentry, metrics; see
_instrument.py for their order). Stacked, each HTTP request pays for four coroutines,
four `send` wrappers and four separate looks at the same request. `StackMiddleware`
does their work for an HTTP request in one coroutine with one `send` wrapper, calling
each middleware's own per-request steps in the order the stack would, so what is
recorded is the same; the request ID goes to tracing and Sentry directly instead of
through the context.

Everything else goes through the composed middlewares unchanged: websockets, the
lifespan, scrapes of the metrics endpoint, and every request when Sentry performance
transactions are on (the transaction wraps the request, a slow path anyway).
"""

from __future__ import annotations

from contextvars import Context, copy_context
from time import perf_counter, time_ns
from typing import TYPE_CHECKING, Any

from ._asgi import (
    UNMATCHED_ROUTE,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    app_path,
)
from ._correlation import TraceIds, current_trace_ids
from ._keepalive import awaited_in
from ._routes import RouteEntry, route_entry, route_template
from .request_id import (
    answer_missing_response,
    assign_request_id,
    current_request_id,
    request_id_var,
    send_internal_error,
    tag_exception,
)

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.trace import Span

    from ._metrics_middleware import PrometheusMiddleware
    from .logs import AccessLog
    from .request_id import RequestIDMiddleware
    from .sentry import SentryMiddleware
    from .tracing import TracingMiddleware


# The in-progress gauge's stand-in where the request is not measured (never used).
_NO_GAUGE: Any = None


class StackMiddleware:
    """Request ID, tracing, Sentry and metrics for an HTTP request, in one layer."""

    def __init__(
        self,
        layered: ASGIApp,
        app: ASGIApp,
        *,
        request_ids: RequestIDMiddleware | None,
        tracing: TracingMiddleware | None,
        sentry: SentryMiddleware | None,
        metrics: PrometheusMiddleware | None,
    ) -> None:
        self.layered = layered  # the composed middlewares, for everything but plain HTTP
        self.app = app  # the application they wrap
        self.request_ids = request_ids
        self.tracing = tracing
        self.sentry = sentry
        self.metrics = metrics
        self.all_layered = sentry is not None and sentry.transactions
        # Whether the final body is sent outside the request's context: only Sentry's
        # scopes and the span are worth keeping out of the keep-alive timer (_keepalive.py).
        self.sends_outside = sentry is not None or tracing is not None
        self.traceresponse = tracing is not None and tracing.tracing.response_header
        if sentry is not None:
            from . import sentry as sentry_module

            self._sentry = sentry_module
        if tracing is not None:
            from . import tracing as tracing_module

            self._tracing = tracing_module

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.all_layered:
            await self.layered(scope, receive, send)
            return
        path, _ = app_path(scope)
        metrics = self.metrics
        if metrics is not None:
            if path == metrics.metrics_path and metrics.endpoint is not None:
                await self.layered(scope, receive, send)  # a scrape: served by the metrics layer
                return
            if metrics.excluded(path):
                metrics = None

        # What the route template is read against once the router has run.
        entry = route_entry(scope, self.app)
        # The context before anything below sets a variable, for the final send.
        outside = copy_context() if self.sends_outside else None

        # Request ID: first, so that everything below can name the request.
        request_ids = self.request_ids
        id_header: bytes | None = None
        id_value = b""
        access_log = None
        request_id: str | None
        if request_ids is not None:
            id_header = request_ids.header
            own_id, id_value = assign_request_id(scope, id_header)
            access_log = request_ids.access_log
            if access_log is not None and not access_log.wants(scope):
                access_log = None
            request_token = request_id_var.set(own_id)
            request_id = own_id
        else:
            request_id = current_request_id()
        access_started = perf_counter() if access_log is not None else 0.0

        # Tracing: the span is current for Sentry, metrics exemplars and log lines. What
        # lives as long as the request is kept in locals and slots, not in tuples: each
        # object alive per request in flight is one more for the young collector to count.
        span: Span | None = None
        span_token: object = None
        span_name = ""
        span_attributes: dict[str, Any] | None = None
        if self.tracing is not None:
            started = self.tracing.begin(scope, request_id)
            if started is not None:
                span, span_token, span_name, span_attributes = started
                del started
        # The trace the exemplar names: the span's own ids, without a look-up.
        span_ids = self._tracing.sampled_ids(span) if span is not None else current_trace_ids()
        # Sentry: this request's own scopes.
        sentry_tokens: tuple[Token[Any], Token[Any]] | None = None
        if self.sentry is not None:
            sentry_module = self._sentry
            sentry_tokens = sentry_module.enter_request_scopes(
                sentry_module.RequestEventProcessor(scope, entry, request_id),
                # A sampled span of ours gives events and outgoing requests their trace.
                None
                if span is not None and span_ids is not None
                else self.sentry.incoming_trace(scope),
            )
        # Metrics: in progress from here.
        if metrics is not None:
            method, gauge = metrics.begin(scope, path)
            clock = perf_counter()
        else:
            method, gauge, clock = "", _NO_GAUGE, 0.0

        # This request's `send`, and what it sees of the response (see _Response).
        response = _Response(
            send, scope, entry, id_header, id_value, access_log, outside,
            metrics, method, gauge, clock, span_ids,
        )  # fmt: skip
        if span is not None and self.traceresponse:
            response.trace_header = self._tracing.traceresponse(span)

        error: Exception | None = None
        error_type: str | None = None
        returned = False
        try:
            await self.app(scope, receive, response)
            returned = True
        except Exception as exc:
            error = exc
            # Each concern's handling, innermost first, as the stacked layers would.
            if metrics is not None:
                if not response.finished:
                    response.finished = True
                    response.route = route_template(scope, entry)
                    response.routed = True
                    metrics.finish(method, response.status, clock, gauge, response.route, span_ids)
                if not response.client_gone:
                    metrics.count_error(type(exc).__name__, response.route or UNMATCHED_ROUTE)
            if self.sentry is not None:
                self._sentry.capture_unhandled(exc)
            if span is not None:
                error_type = self._tracing.record_error(span, exc)
            raise
        finally:
            status, route = response.status, response.route
            if not response.routed and (metrics is not None or span is not None):
                route = route_template(scope, entry)
            if metrics is not None and not response.finished:
                # Returned without a final body (a stream cut short, no response at all),
                # or cancelled: still count the request and balance the gauge.
                metrics.finish(method, status, clock, gauge, route, span_ids)
            if sentry_tokens is not None:
                self._sentry.exit_request_scopes(sentry_tokens)
            if span is not None:
                self._tracing.finish(
                    (span, span_token, span_name, span_attributes or {}),
                    scope, route, status, error_type, response.end_time,
                )  # fmt: skip
            if request_ids is not None:
                try:
                    if error is not None:
                        tag_exception(error, own_id)
                        if not response.started and id_header is not None:
                            # An app without Starlette's error middleware raised before
                            # responding: answer the 500 ourselves, carrying the ID.
                            await send_internal_error(send, (id_header, id_value))
                    elif returned and not response.started and id_header is not None:
                        await answer_missing_response(send, (id_header, id_value))
                    if access_log is not None:
                        access_status = status or 500
                        access_log.emit(
                            scope,
                            access_status,
                            perf_counter() - access_started,
                            own_id,
                            response.trace_ids,
                        )
                finally:
                    request_id_var.reset(request_token)


class _Response:
    """One request's `send` for the stack layer (the object itself is what the app
    calls), and what it saw of the response.

    One object with slots where a closure over the same state would make a cell per
    variable, and callable where a bound method would be one more object: each object
    alive per request in flight is one more reason for the young-generation collector
    to run under load.
    """

    __slots__ = (
        "access_log",
        "client_gone",
        "clock",
        "downstream",
        "end_time",
        "entry",
        "finished",
        "gauge",
        "id_header",
        "id_value",
        "method",
        "metrics",
        "outside",
        "route",
        "routed",
        "scope",
        "span_ids",
        "started",
        "status",
        "trace_header",
        "trace_ids",
    )  # fmt: skip

    def __init__(
        self,
        downstream: Send,
        scope: Scope,
        entry: RouteEntry,
        id_header: bytes | None,
        id_value: bytes,
        access_log: AccessLog | None,
        outside: Context | None,
        metrics: PrometheusMiddleware | None,
        method: str,
        gauge: Any,
        clock: float,
        span_ids: TraceIds | None,
    ) -> None:
        self.downstream = downstream  # the server's send
        self.scope = scope
        self.entry = entry
        # The request ID header to add (None: none) and its value; the pair is made when
        # the response starts, not held as a tuple for the whole request.
        self.id_header = id_header
        self.id_value = id_value
        self.access_log = access_log
        # The context from before the request, for the final send (None: the current one).
        self.outside = outside
        # What metrics.finish() needs once the final body is sent (metrics None: nothing).
        self.metrics = metrics
        self.method = method
        self.gauge = gauge
        self.clock = clock
        self.span_ids = span_ids
        self.status = 0
        self.route: str | None = None  # the route template, read once the response is sent
        self.routed = False
        self.started = False
        self.finished = False
        self.client_gone = False
        self.end_time: int | None = None
        self.trace_ids: TraceIds | None = None  # the span, for the access line
        # The server span's `traceresponse` header, when TRACE_RESPONSE_HEADER asks for it.
        self.trace_header: tuple[bytes, bytes] | None = None

    async def __call__(self, message: Message) -> None:
        message_type = message["type"]
        if message_type == "http.response.start":
            if not self.started:  # the server refuses a second start: the first counts
                self.status = message["status"]
                self.started = True
            if self.trace_header is not None:
                # Before the request ID: where the stacked tracing layer, inside the request
                # ID's, would put it.
                message["headers"] = [*message.get("headers", ()), self.trace_header]
            if self.id_header is not None:
                header = (self.id_header, self.id_value)
                message["headers"] = [*message.get("headers", ()), header]
            if self.access_log is not None:
                # Remember the span for the access line, written after it has ended.
                self.trace_ids = current_trace_ids()
            final = False
        else:
            final = message_type == "http.response.body" and not message.get("more_body", False)
            if not self.finished and (final or message_type == "http.response.pathsend"):
                # The final body message: stop the clocks once it is sent, before any
                # background task runs.
                self.finished = True
                try:
                    if self.outside is None:
                        await self.downstream(message)
                    else:
                        await awaited_in(self.outside, self.downstream(message))
                except OSError:  # ASGI servers raise it from send() once the client left
                    self.client_gone = True
                    raise
                finally:
                    self.route = route = route_template(self.scope, self.entry)
                    self.routed = True
                    metrics = self.metrics
                    if metrics is not None:
                        metrics.finish(
                            self.method, self.status, self.clock, self.gauge, route, self.span_ids
                        )
                if final:
                    self.end_time = time_ns()
                return
        try:
            await self.downstream(message)
        except OSError:
            self.client_gone = True
            raise
        if final:
            self.end_time = time_ns()
