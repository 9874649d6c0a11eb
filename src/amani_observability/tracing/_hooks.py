"""The tracing concern's per-request hooks: one SERVER span per request, named, attributed
and ended as the HTTP semantic conventions say."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)

from .. import _correlation
from .._asgi import (
    KNOWN_METHODS,
    OTHER_METHOD,
    Message,
    Scope,
    compile_paths,
)
from .._correlation import TraceIds
from .._lifecycle import Lifecycle
from .._pipeline import Exchange, RequestHooks
from .._redaction import redactor_for
from .._version import __version__
from ..settings import ObservabilitySettings
from ._export import (
    ExportGuard,
    quiet_exporter_logs,
    shut_down,
)
from ._otel_seam import (
    LightPipeline,
    LightSpan,
    attach_span,
    current_context,
    describe,
    detach,
    ignores_attributes,
    light_decision,
    span_of,
)

if TYPE_CHECKING:
    from ..settings import ObservabilitySettings

from ._provider import active, instrument_libraries, provider_for, retired

logger = logging.getLogger("amani_observability.tracing")

# Our span attribute for the request ID. Not a semantic-convention name: there is none.
REQUEST_ID_ATTRIBUTE = "request.id"
TRACER_NAME = "amani_observability"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ERROR = Status(StatusCode.ERROR)
_SERVER = SpanKind.SERVER


def _current_trace_ids() -> TraceIds | None:
    """The correlation getter: IDs of the current span, only when it is sampled and valid."""
    return sampled_ids(trace.get_current_span())


# --- the middleware ---------------------------------------------------------------------------


class _Tracing:
    """What one instrument() call's start-up built; read by its middleware instances.

    Kept apart from the middleware because Starlette may rebuild the middleware stack
    (and so our middleware) after start-up.
    """

    def __init__(
        self, settings: ObservabilitySettings, given_provider: TracerProvider | None
    ) -> None:
        self.settings = settings
        self.given_provider = given_provider  # the service's own, passed to instrument()
        self.tracer: Tracer | None = None  # None until start-up: requests pass through
        self.fields: frozenset[bytes] = frozenset()
        self.early_attributes = True
        # The SDK-equivalent fast path for the server span, where the provider allows it.
        self.light: LightPipeline | None = None
        self.light_off = "not started"  # why self.light is None
        self.provider: TracerProvider | None = None
        self.owned = False
        self.guard: ExportGuard | None = None
        self.instrumentors: list[Any] = []
        self.policy = settings.trace_context_policy
        self.response_header = settings.trace_response_header
        self.redactor = redactor_for(tuple(settings.redact_keys))

    def start(self) -> None:
        provider, owned, guard = provider_for(self.settings, self.given_provider)
        self.provider, self.owned, self.guard = provider, owned, guard
        if guard is not None:
            quiet_exporter_logs(True)
        self.instrumentors = instrument_libraries(provider)
        # The header names the configured propagators read (W3C traceparent, tracestate
        # and baggage by default), so requests without them skip extraction; with the
        # "ignore" policy, none are read.
        fields = propagate.get_global_textmap().fields
        if self.policy == "ignore":
            fields = set()
        self.fields = frozenset(name.lower().encode("latin-1") for name in fields)
        self.early_attributes = not ignores_attributes(getattr(provider, "sampler", None))
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)
        # Only for the SDK's own samplers, which decide without the span's attributes.
        if self.early_attributes:
            self.light, self.light_off = None, "sampler reads attributes"
        else:
            self.light, self.light_off = light_decision(provider, self.tracer)
        active.provider = provider
        _correlation.set_trace_ids_getter(_current_trace_ids)

    async def stop(self) -> None:
        self.tracer = None
        self.light = None
        _correlation.set_trace_ids_getter(None)
        for instrumentor in self.instrumentors:
            try:
                instrumentor.uninstrument()
            except Exception:
                logger.debug("could not switch off %r", instrumentor, exc_info=True)
        self.instrumentors = []
        provider, self.provider = self.provider, None
        if active.provider is provider:
            active.provider = None
        try:
            if provider is not None and self.owned:
                await shut_down(provider, self.guard)
                retired.append(provider)
        finally:
            if self.guard is not None:
                quiet_exporter_logs(False)
            self.guard = None


def tracing_hooks(
    settings: ObservabilitySettings,
    lifecycle: Lifecycle,
    tracer_provider: TracerProvider | None = None,
) -> TracingHooks:
    """The tracing concern; its provider (`tracer_provider`, or one of ours) is set up at
    start-up."""
    tracing = _Tracing(settings, tracer_provider)
    lifecycle.on_startup(tracing.start)
    lifecycle.on_shutdown(tracing.stop)
    lifecycle.report_fast_path(lambda: describe(tracing.light, tracing.light_off))
    return TracingHooks(tracing, compile_paths(_excluded_paths(settings)))


def _excluded_paths(settings: ObservabilitySettings) -> list[str]:
    """TRACING_EXCLUDED_PATHS; left unset, the metrics endpoint (wherever METRICS_PATH puts
    it) and /health."""
    if "tracing_excluded_paths" in settings.model_fields_set:
        return list(settings.tracing_excluded_paths)
    return [re.escape(settings.metrics_path), "/health"]


FASTAPI_SPAN_SEEN = (
    "FastAPI opened its own server span for a request, so amani_observability adds none "
    "(one server span per request). FastAPI's span does not carry request.id, applies "
    "neither REDACT_KEYS to url.query nor TRACE_CONTEXT_POLICY: build the app with "
    'FastAPI(telemetry={"tracing": False}) to get the library\'s span (docs/tracing.md)'
)


class _SpanState:
    """One request's server span, from start to finish."""

    __slots__ = ("attributes", "error_type", "name", "response_header", "span", "token")

    def __init__(
        self,
        span: trace.Span,
        token: object,
        name: str,
        attributes: dict[str, Any],
        response_header: tuple[bytes, bytes] | None,
    ) -> None:
        self.span = span
        self.token = token  # restores the caller's context
        self.name = name  # the span's initial name
        self.attributes = attributes  # set at the end, with what the response told us
        self.response_header = response_header  # `traceresponse`, when asked for
        self.error_type: str | None = None


class TracingHooks(RequestHooks):
    """One SERVER span per HTTP request and websocket connection, and nothing more."""

    name = "tracing"
    reads_routes = True
    keeps_context = True

    def __init__(self, tracing: _Tracing, excluded: Callable[[str], bool]) -> None:
        self.tracing = tracing
        self.excluded = excluded
        self.warned_about_fastapi = False

    def start(self, exchange: Exchange) -> _SpanState | None:
        tracer = self.tracing.tracer
        if tracer is None:
            return None  # before start-up or after shutdown: requests pass through
        scope = exchange.scope
        if scope.get("fastapi.telemetry") is not None and _server_span_current():
            # FastAPI's native telemetry, outside us, opened this request's server span.
            if not self.warned_about_fastapi:
                self.warned_about_fastapi = True
                logger.warning(FASTAPI_SPAN_SEEN)
            return None
        # A FastAPI app mounted below us checks this scope key and then opens no span of
        # its own (excluded paths included).
        scope.setdefault("fastapi.telemetry", None)
        if self.excluded(scope["path"]):
            return None
        tracing = self.tracing
        try:
            name, attributes, parent = _start_attributes(scope, tracing, exchange.request_id)
            caller: SpanContext | None = None
            if parent is not None and tracing.policy == "restart":
                # A new trace that remembers the caller's span; its baggage stays outside.
                caller = span_of(parent).get_span_context()
                parent = None
            base = parent if parent is not None else current_context()
            light = tracing.light
            if light is not None:
                span = light.start(name, parent, span_of(base))
            elif tracing.early_attributes:
                span = tracer.start_span(name, parent, _SERVER, attributes)
                attributes = {}
            else:
                # The sampler ignores attributes: hand them over once, at the end, with
                # the rest (the SDK validates start attributes twice, for the sampler
                # and for the span).
                span = tracer.start_span(name, parent, _SERVER)
            if caller is not None and caller.is_valid:
                span.add_link(caller)
            token = attach_span(span, base)
        except Exception:  # observability must never break the request
            logger.exception("could not start the request's span")
            return None
        exchange.traced = True
        exchange.trace_ids = sampled_ids(span)
        header = (
            traceresponse(span) if tracing.response_header and scope["type"] == "http" else None
        )
        return _SpanState(span, token, name, attributes, header)

    def response_started(self, exchange: Exchange, state: _SpanState, message: Message) -> None:
        if state.response_header is not None and message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), state.response_header]

    def failed(self, exchange: Exchange, state: _SpanState, error: Exception) -> None:
        state.error_type = record_error(state.span, error)

    def finish(self, exchange: Exchange, state: _SpanState) -> None:
        """End the span with what the response told us, and restore the caller's context."""
        span = state.span
        try:
            if span.is_recording():
                _end_attributes(
                    span, state.name, state.attributes, exchange.scope, exchange.settle_route(),
                    exchange.status, state.error_type,
                )  # fmt: skip
            span.end(exchange.end_time)
        except Exception:  # never replace the app's own exception with ours
            logger.exception("could not end the request's span")
        finally:
            detach(state.token)


def _server_span_current() -> bool:
    """Whether a valid SERVER span is current: FastAPI's own, when its scope key is set."""
    span = trace.get_current_span()
    return span.get_span_context().is_valid and getattr(span, "kind", None) is _SERVER


TRACERESPONSE = b"traceresponse"


def traceresponse(span: trace.Span) -> tuple[bytes, bytes]:
    """The W3C Trace Context Level 2 `traceresponse` header naming this server span."""
    context = span.get_span_context()
    value = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return TRACERESPONSE, value.encode("ascii")


def sampled_ids(span: trace.Span) -> TraceIds | None:
    """The span's (trace_id, span_id) in hex when it is sampled and valid, else None."""
    if type(span) is LightSpan:
        return span.hex_ids()
    context = span.get_span_context()
    if context.trace_flags.sampled and context.is_valid:
        return format(context.trace_id, "032x"), format(context.span_id, "016x")
    return None


def record_error(span: trace.Span, exc: BaseException) -> str | None:
    """Record an exception escaping the app on the span; its error.type, or None."""
    if span.is_recording() and not _normal_close(exc):
        span.record_exception(exc)
        return _type_name(type(exc))
    return None


def _start_attributes(
    scope: Scope, tracing: _Tracing, request_id: str | None
) -> tuple[str, dict[str, Any], otel_context.Context | None]:
    """The span's initial name and attributes, and the caller's trace context if any."""
    is_http = scope["type"] == "http"
    # A websocket connection starts with a GET handshake.
    method = scope.get("method", "GET") if is_http else "GET"
    scheme = scope.get("scheme") or ("http" if is_http else "ws")
    if method in KNOWN_METHODS:
        name = method
        attributes: dict[str, Any] = {"http.request.method": method}
    else:
        name = "HTTP"  # the conventions' span name for a method outside the known set
        attributes = {"http.request.method": OTHER_METHOD, "http.request.method_original": method}
    attributes["url.path"] = scope["path"]
    attributes["url.scheme"] = scheme
    query = scope.get("query_string")
    if query:
        # The semantic conventions' redaction (X-Amz-Signature, sig) and ours (token, ...).
        attributes["url.query"] = tracing.redactor.query(query.decode("latin-1"))
    version = scope.get("http_version")
    if version:
        attributes["network.protocol.version"] = version

    host = agent = None
    carrier: dict[str, str] | None = None
    fields = tracing.fields
    for key, value in scope["headers"]:
        if key == b"host":
            host = value
        elif key == b"user-agent":
            agent = value
        elif key in fields:
            if carrier is None:
                carrier = {}
            header = key.decode("latin-1")
            text = value.decode("latin-1")
            # Repeated headers (baggage may be split) are one comma-separated list.
            carrier[header] = f"{carrier[header]},{text}" if header in carrier else text
    address, port = _server_address(host, scheme, scope.get("server"))
    if address is not None:
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    if agent is not None:
        attributes["user_agent.original"] = agent.decode("latin-1")
    if request_id is not None:
        attributes[REQUEST_ID_ATTRIBUTE] = request_id
    parent = None
    if carrier is not None:
        try:
            # A malformed traceparent yields an empty context: a new trace, not an error.
            parent = propagate.extract(carrier)
        except Exception:
            logger.debug("could not extract the incoming trace context", exc_info=True)
    return name, attributes, parent


def _end_attributes(
    span: Any,
    name: str,
    attributes: dict[str, Any],
    scope: Scope,
    route: str | None,
    status_code: int,
    error_type: str | None,
) -> None:
    """Add what the response told us (route, status, error) and set it all at once."""
    if route is not None:
        span.update_name(f"{name} {route}")
        attributes["http.route"] = route
    if status_code:
        attributes["http.response.status_code"] = status_code
        if error_type is None and status_code >= 500:
            error_type = str(status_code)
    elif error_type is None and scope["type"] == "http":
        error_type = "incomplete_response"  # the app returned without answering
    if error_type is not None:
        attributes["error.type"] = error_type
        span.set_status(_ERROR)
    _set_attributes(span, attributes)


def _set_attributes(span: Any, attributes: dict[str, Any]) -> None:
    """The server span's attributes, set at its end: handed over as the middleware's own
    dict to a light span, through the SDK's public call to any other."""
    if type(span) is LightSpan:
        span.own_attributes = attributes  # the middleware's own dict, built for this span
        return
    span.set_attributes(attributes)


_server_cache: dict[tuple[bytes | None, str], tuple[str | None, int | None]] = {}


def _server_address(
    host: bytes | None, scheme: str, server: Sequence[Any] | None
) -> tuple[str | None, int | None]:
    """server.address and server.port from the Host header, else from the ASGI server."""
    if host is None:
        if not server:
            return None, None
        return str(server[0]), (int(server[1]) if server[1] is not None else None)
    key = (host, scheme)
    cached = _server_cache.get(key)
    if cached is not None:
        return cached
    try:
        parts = urlsplit("//" + host.decode("latin-1"))
        address, port = parts.hostname, parts.port
    except ValueError:  # a malformed Host header must not cost the request
        address, port = None, None
    if address is not None and port is None:
        port = _DEFAULT_PORTS.get(scheme)
    if len(_server_cache) >= 256:  # Host is client-controlled: keep the cache bounded
        _server_cache.clear()
    _server_cache[key] = (address, port)
    return address, port


def _type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _normal_close(exc: BaseException) -> bool:
    """A websocket client going away normally is not an error of the request."""
    return type(exc).__name__ == "WebSocketDisconnect" and getattr(exc, "code", None) in (
        1000,
        1001,
    )
