"""One per-request driver for every concern: the RequestHooks protocol and the Pipeline.

Each concern (request ID, access log, tracing, Sentry, metrics) is one RequestHooks class,
written once. A Pipeline runs a tuple of them around the app with one coroutine and one
`send` wrapper: `instrument()` builds one Pipeline with every concern that is on, in its
fixed order, and each concern's standalone middleware is a Pipeline with its one hook.

Phases, and the order hooks see them (outermost is first in the tuple):

    start              outermost first, before the app runs
    response_started   innermost first, for each http.response.start / websocket.accept /
                       websocket.http.response.start, before it is sent (headers go here)
    response_finished  innermost first, once the final body was sent (or failed to be)
    failed             innermost first, when the app raised an exception
    finish             innermost first, always, last: release what start took

Innermost first is the order stacked middlewares would see the response in, so one
Pipeline and the same hooks nested as single-hook Pipelines record the same things.

A hook that raises is switched off for the rest of that request (its `finish` still runs,
to release what it holds), counted as a loss and logged at most once a minute; the
response is never changed by an observability failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextvars import Context, copy_context
from time import monotonic, time_ns
from typing import Any, ClassVar

from ._asgi import ASGIApp, Message, Receive, Scope, Send, app_path
from ._correlation import TraceIds, current_trace_ids, request_id_var
from ._keepalive import awaited_in, is_final_body
from ._lifecycle import Lifecycle, run_lifespan
from ._losses import count_dropped
from ._routes import RouteEntry, route_entry, route_template

logger = logging.getLogger("amani_observability")

HOOK_FAILED = (
    "Observability hook %s.%s raised; %s is off for the rest of that request "
    "(%d such failure(s) since the last line)"
)
# Logged when the application returned without sending a response.
NO_RESPONSE = "The application returned without sending a response; answered 500"
_INTERNAL_ERROR_BODY = b"Internal Server Error"
# Seconds between two log lines about the same failing hook phase.
HOOK_FAILURE_LOG_INTERVAL = 60.0

# The response-start messages: they carry the status and the headers hooks may add to.
_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})
_UNREAD: Any = object()  # Exchange.trace_ids before anyone asked
# Exchange.entry of a pipeline whose concerns read no route.
NO_ENTRY: RouteEntry = (None, "", None, None)


class Exchange:
    """One request as the hooks share it: what the pipeline saw, and what hooks told it."""

    __slots__ = (
        "client_gone",
        "end_time",
        "entry",
        "error_response_header",
        "finished",
        "path",
        "request_id",
        "route",
        "routed",
        "scope",
        "started",
        "status",
        "trace_ids",
        "traced",
    )

    def __init__(self, scope: Scope, entry: RouteEntry, path: str) -> None:
        self.scope = scope
        self.entry = (
            entry  # what the router left in the scope before the app ran (NO_ENTRY: unread)
        )
        self.path = path  # relative to the app's root path
        # The request's ID: set by the request ID hook, else the one an outer layer set.
        self.request_id: str | None = request_id_var.get()
        # The header the pipeline's own 500 carries when the app raised or returned before
        # responding (set by the request ID hook); None: the server answers instead.
        self.error_response_header: tuple[bytes, bytes] | None = None
        self.status = 0  # the first response start's status; 0 until then
        self.started = False
        self.finished = False  # the final body message was sent (or its send failed)
        self.client_gone = False
        self.end_time: int | None = None  # when the final body was sent (time_ns)
        self.route: str | None = None  # the route template, once `routed`
        self.routed = False
        # The sampled (trace_id, span_id) of the request; see trace().
        self.trace_ids: TraceIds | None = _UNREAD
        self.traced = False  # the tracing hook started this request's server span

    def trace(self) -> TraceIds | None:
        """The request's sampled trace: the tracing hook's span, else the span current at
        the first call (an outer layer's)."""
        if self.trace_ids is _UNREAD:
            self.trace_ids = current_trace_ids()
        return self.trace_ids

    def settle_route(self) -> str | None:
        """The route template, read once the router has run (call it from the final-body,
        failed or finish phase) and kept for the other hooks; None: no route matched."""
        if not self.routed:
            entry = self.entry
            self.route = None if entry is NO_ENTRY else route_template(self.scope, entry)
            self.routed = True
        return self.route


class RequestHooks:
    """The protocol every concern implements; the defaults do nothing.

    `start` returns the request's state for the other phases, or None to sit this
    request out (wrong scope type, excluded path, off). A phase a class does not
    override costs nothing per request.
    """

    name: ClassVar[str] = "hooks"  # the concern, in logs and in dropped_total's pipeline label
    # Whether the concern reads the route template (Exchange.entry, settle_route()).
    reads_routes: ClassVar[bool] = False
    # Whether the final body should be sent outside the request's context variables: only
    # worth it for concerns that keep large objects in them (_keepalive.py).
    keeps_context: ClassVar[bool] = False

    def serves(self, path: str) -> ASGIApp | None:
        """An app of the concern's own to answer `path` with instead of the service's."""
        return None

    def start(self, exchange: Exchange) -> object | None:
        return None

    def response_started(self, exchange: Exchange, state: Any, message: Message) -> None:
        return None

    def response_finished(self, exchange: Exchange, state: Any) -> None:
        return None

    def failed(self, exchange: Exchange, state: Any, error: Exception) -> None:
        return None

    def finish(self, exchange: Exchange, state: Any) -> None:
        return None


class _Disabled:
    """A hook's state after the hook raised: only its `finish` still runs."""

    __slots__ = ("state",)

    def __init__(self, state: object) -> None:
        self.state = state


# A phase's calls: (the hook's index, its bound method), innermost first.
_Calls = tuple[tuple[int, Callable[..., None]], ...]


def _overriding(hooks: Sequence[RequestHooks], phase: str) -> _Calls:
    """The hooks that implement `phase`, innermost first, with their bound methods."""
    base = getattr(RequestHooks, phase)
    return tuple(
        (index, getattr(hooks[index], phase))
        for index in reversed(range(len(hooks)))
        if getattr(type(hooks[index]), phase) is not base
    )


class _FailureLog:
    """Logs a failing hook phase at most once per interval, with how often it failed."""

    def __init__(self) -> None:
        self.unlogged: dict[tuple[str, str], int] = {}
        self.logged_at: dict[tuple[str, str], float] = {}

    def note(self, hook: RequestHooks, phase: str) -> None:
        count_dropped(hook.name, "hook_failed")
        key = (hook.name, phase)
        self.unlogged[key] = self.unlogged.get(key, 0) + 1
        now = monotonic()
        if now - self.logged_at.get(key, -HOOK_FAILURE_LOG_INTERVAL) >= HOOK_FAILURE_LOG_INTERVAL:
            self.logged_at[key] = now
            count = self.unlogged.pop(key)
            logger.warning(HOOK_FAILED, hook.name, phase, hook.name, count, exc_info=True)


_failures = _FailureLog()


class Pipeline:
    """An ASGI middleware running `hooks` (outermost first) around `app`."""

    def __init__(
        self, app: ASGIApp, hooks: Sequence[RequestHooks], lifecycle: Lifecycle | None = None
    ) -> None:
        self.app = app
        self.hooks = tuple(hooks)
        # A standalone middleware's own start-up and shutdown, run by the lifespan.
        self.lifecycle = lifecycle
        self._response_started = _overriding(self.hooks, "response_started")
        self._response_finished = _overriding(self.hooks, "response_finished")
        self._failed = _overriding(self.hooks, "failed")
        self._finish = _overriding(self.hooks, "finish")
        self._serving = tuple(
            hook for hook in self.hooks if type(hook).serves is not RequestHooks.serves
        )
        self._keeps_context = any(hook.keeps_context for hook in self.hooks)
        self._reads_routes = any(hook.reads_routes for hook in self.hooks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan" and self.lifecycle is not None:
                await run_lifespan(self.app, self.lifecycle, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        app = self.app
        path, _ = app_path(scope)
        for hook in self._serving:
            own = hook.serves(path)
            if own is not None:
                app = own
                break
        # The context before any hook sets a variable, for the final send.
        outside = copy_context() if self._keeps_context and scope_type == "http" else None
        entry = route_entry(scope, self.app) if self._reads_routes else NO_ENTRY
        exchange = Exchange(scope, entry, path)
        hooks = self.hooks
        states: list[Any] = []
        active = False
        for hook in hooks:
            try:
                state = hook.start(exchange)
            except Exception:
                _failures.note(hook, "start")
                state = None
            states.append(state)
            active = active or state is not None
        if not active:
            await app(scope, receive, send)
            return

        responder = _Responder(self, exchange, states, send, outside)
        returned = False
        try:
            await app(scope, receive, responder)
            returned = True
        except Exception as exc:
            self._run("failed", self._failed, exchange, states, exc)
            header = exchange.error_response_header
            if header is not None and not exchange.started and scope_type == "http":
                # An app without Starlette's error middleware raised before responding:
                # answer the 500 ourselves so that it carries the request ID.
                await send_internal_error(send, header)
            raise
        finally:
            if (
                returned
                and not exchange.started
                and exchange.error_response_header is not None
                and scope_type == "http"
            ):
                logger.error(NO_RESPONSE)
                await send_internal_error(send, exchange.error_response_header)
            for index, finish in self._finish:
                state = states[index]
                if state is not None:
                    if type(state) is _Disabled:
                        state = state.state
                    try:
                        finish(exchange, state)
                    except Exception:
                        _failures.note(hooks[index], "finish")

    def _run(
        self, phase: str, calls: _Calls, exchange: Exchange, states: list[Any], *extra: Any
    ) -> None:
        """Run one phase's hooks; a hook that raises is switched off for the request."""
        for index, call in calls:
            state = states[index]
            if state is not None and type(state) is not _Disabled:
                try:
                    call(exchange, state, *extra)
                except Exception:
                    _failures.note(self.hooks[index], phase)
                    states[index] = _Disabled(state)


class _Responder:
    """One request's `send` (the object itself is what the app calls).

    One object with slots where a closure would make a cell per variable it holds: each
    object alive per request in flight is one more for the young-generation collector.
    """

    __slots__ = ("downstream", "exchange", "outside", "pipeline", "states")

    def __init__(
        self,
        pipeline: Pipeline,
        exchange: Exchange,
        states: list[Any],
        downstream: Send,
        outside: Context | None,
    ) -> None:
        self.pipeline = pipeline
        self.exchange = exchange
        self.states = states
        self.downstream = downstream  # the server's send
        self.outside = outside  # the context from before the request (None: the current one)

    async def __call__(self, message: Message) -> None:
        message_type = message["type"]
        exchange = self.exchange
        if message_type in _STARTS:
            if not exchange.started:  # the server refuses a second start: the first counts
                exchange.started = True
                exchange.status = message.get("status", 101)
            pipeline = self.pipeline
            pipeline._run(
                "response_started", pipeline._response_started, exchange, self.states, message
            )
        elif is_final_body(message):
            if not exchange.finished:
                # The final body: stop the clocks once it is sent, before any background
                # task runs.
                exchange.finished = True
                try:
                    if self.outside is None:
                        await self.downstream(message)
                    else:
                        await awaited_in(self.outside, self.downstream(message))
                except OSError:  # ASGI servers raise it from send() once the client left
                    exchange.client_gone = True
                    raise
                else:
                    if message_type == "http.response.body":
                        exchange.end_time = time_ns()
                finally:
                    pipeline = self.pipeline
                    pipeline._run(
                        "response_finished", pipeline._response_finished, exchange, self.states
                    )
                return
        elif message_type == "websocket.close" and not exchange.started:
            exchange.status = 403  # closed before the handshake: the server answers 403
        try:
            await self.downstream(message)
        except OSError:
            exchange.client_gone = True
            raise


async def send_internal_error(send: Send, header_pair: tuple[bytes, bytes]) -> None:
    """The 500 the server would have sent, carrying `header_pair` (the request ID)."""
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
