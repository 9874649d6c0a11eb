"""Sentry's client set-up, the per-request hooks and the redaction of every event."""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import warnings
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

import sentry_sdk
from sentry_sdk.integrations import DidNotEnable, Integration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.scope import Scope as _SentryScope
from sentry_sdk.scope import ScopeType, add_global_event_processor
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
from sentry_sdk.serializer import add_global_repr_processor
from sentry_sdk.utils import BadDsn, event_from_exception, iter_event_frames

from .._asgi import UNMATCHED_ROUTE, ASGIApp, Message, Scope, compile_paths
from .._correlation import current_trace_ids
from .._fallbacks import fallback_taken as _fallback_taken
from .._own_traffic import is_own_traffic
from .._pipeline import Exchange, Pipeline, RequestHooks
from .._redaction import REDACTED, Redactor, redactor_for
from .._routes import RouteEntry, route_template
from ..exceptions import ConfigurationError
from ..logs import ACCESS_LOGGER
from ..settings import ObservabilitySettings
from ._losses import LossCountingTransport
from ._losses import wants_ours as wants_our_transport
from ._queries import (
    listed,
    record_queries,
    sqlalchemy_integration,
    wants_the_sdks_query_spans,
)
from ._sentry_seam import bridge_traces, current_scope_var, isolation_scope_var, unbridge_traces
from ._threads import ThreadingIntegration
from ._threads import wants_ours as wants_our_threading

if TYPE_CHECKING:
    from .._lifecycle import Lifecycle


logger = logging.getLogger("amani_observability.sentry")

SENTRY_DISABLED = "Sentry error tracking is off: SENTRY_DSN is not set"
SENTRY_ENABLED = "Sentry error tracking is on (environment %s, release %s)"

# Seconds the shutdown hook waits for queued events to reach Sentry.
FLUSH_TIMEOUT = 2.0

# Transaction sources as strings: sentry-sdk < 2.2x has no TransactionSource enum, and the
# newer one is a str enum equal to these.
SOURCE_URL = "url"
SOURCE_ROUTE = "route"
SOURCE_CUSTOM = "custom"

# Name of the context `capture_exception(context=...)` fills in.
CONTEXT_NAME = "details"

# Client addresses: left out of the request headers attached to events (no PII).
_ADDRESS_HEADERS = frozenset({"x-forwarded-for", "x-real-ip", "forwarded"})
# Raw request bodies FastAPI and Starlette keep in their frames' variables: replaced whole,
# whatever their format (a body need not be JSON or form data).
BODY_BUFFERS = frozenset({"body", "body_bytes", "json_body", "_body", "_json", "_form", "form"})
_FRAMEWORK_MODULES = ("fastapi.", "starlette.")
_MIN_SECRET_LENGTH = 6
_SECRETS_HINT = "amani_observability_secrets"
# Top-level event keys only the SDK fills, with no request or user data: not walked.
_SDK_OWNED = frozenset(
    {"modules", "sdk", "debug_meta", "platform", "event_id", "timestamp", "start_timestamp"}
)
REDACTION_FAILED = "Dropped a Sentry event that could not be redacted"

# The redaction policy of events (REDACT_KEYS): replaced by init_sentry() from the settings.
_redactor: Redactor = redactor_for(())
_processor_added = False


@dataclass(frozen=True)
class _Policy:
    """What before_send_handler drops; replaced by init_sentry() from the settings."""

    excluded_path: Callable[[str], bool]
    report_status_codes: frozenset[int]


def _policy_from(settings: ObservabilitySettings) -> _Policy:
    return _Policy(
        excluded_path=compile_paths(
            [*settings.sentry_excluded_paths, re.escape(settings.metrics_path)]
        ),
        report_status_codes=settings.sentry_report_status_codes,
    )


# Until init_sentry() runs: the defaults of the settings.
DEFAULT_POLICY = _Policy(compile_paths(["/metrics", "/health"]), frozenset())
_policy = DEFAULT_POLICY


# --- set-up ----------------------------------------------------------------------------------


def init_sentry(settings: ObservabilitySettings | None = None, **sdk_options: Any) -> bool:
    """Start the Sentry client from the settings; return whether Sentry is on.

    Without `SENTRY_DSN` nothing is started and one info line is logged. Extra keyword
    arguments go to `sentry_sdk.init()` unchanged and win over ours (e.g.
    `in_app_include=["myservice"]`).
    """
    global _policy, _redactor, _processor_added
    if settings is None:
        settings = ObservabilitySettings()
    _policy = _policy_from(settings)
    _redactor = redactor_for(tuple(settings.redact_keys))
    if not _processor_added:
        # Global, so every event is redacted whichever scope sends it. Frame variables
        # are serialised when the exception is captured, before any event processor:
        # the repr processor redacts bytes, JSON text and models while they are objects.
        add_global_repr_processor(redacted_repr)
        add_global_event_processor(redact_event)
        _processor_added = True
    record_queries(False)
    if settings.sentry_dsn is None:
        logger.info(SENTRY_DISABLED)
        return False

    traces = settings.sentry_traces_sample_rate
    options: dict[str, Any] = {
        "dsn": settings.sentry_dsn.get_secret_value(),
        "environment": settings.environment,
        "release": settings.service_version,
        # None, not 0.0: the SDK treats any number as "tracing on" and then builds
        # (unsampled) transactions and propagation data we would pay for on every request.
        "traces_sample_rate": traces if traces > 0 else None,
        "profiles_sample_rate": settings.sentry_profiles_sample_rate or None,
        # Our middleware reads no body; this keeps any other integration from reading one.
        "max_request_body_size": "never",
        # send_default_pii is left unset, which means False: no IPs, cookies or user data
        # are collected and the SDK's EventScrubber runs. (sentry-sdk 2.7x deprecates
        # passing it at all, in favour of `data_collection`.)
        "before_send": _redacting(settings.sentry_before_send or before_send_handler),
        "before_breadcrumb": _without_own_traffic(None),
        # Our SentryMiddleware replaces these (same data, a fraction of the cost), and with
        # them on every unhandled exception would be captured twice.
        "disabled_integrations": _framework_integrations(),
    }
    if "event_scrubber" not in sdk_options and "data_collection" not in sdk_options:
        # The SDK's scrubber, nested data included, as a second line behind redact_event.
        denylist = [*DEFAULT_DENYLIST, *sorted(_redactor.keys)]
        options["event_scrubber"] = EventScrubber(denylist=denylist, recursive=True)
    options.update(sdk_options)
    # A service's own hooks win over ours, but inside our redaction, never around it.
    for hook, wrap in (
        ("before_send", _redacting),
        ("before_send_transaction", _redacting),
        ("before_breadcrumb", _without_own_traffic),
    ):
        if hook in sdk_options:
            options[hook] = wrap(sdk_options[hook])
    if wants_our_transport(options):
        # The SDK's own transport, counting the events it loses (_sentry_losses.py).
        options["transport"] = LossCountingTransport
    if wants_our_threading(options):
        # The SDK's, minus scope forks that asyncio.to_thread() makes moot (_sentry_threads).
        options["integrations"] = [*(options.get("integrations") or ()), ThreadingIntegration()]
    # Errors-only: query breadcrumbs without the SDK's per-query span (see _sentry_queries).
    # None without SQLAlchemy; a service that disables the SDK's integration gets none.
    queries = sqlalchemy_integration()
    breadcrumbs = queries is not None and not listed(queries, sdk_options, "disabled_integrations")
    if queries is not None and breadcrumbs and not wants_the_sdks_query_spans(options):
        options["disabled_integrations"] = [*options.get("disabled_integrations", ()), queries()]
    try:
        with warnings.catch_warnings():
            # SENTRY_PROFILES_SAMPLE_RATE means "this fraction of transactions" (the guide's
            # meaning), which is the SDK's transaction-based profiling; 2.x deprecates it in
            # favour of per-process continuous profiling but still supports it fully.
            warnings.filterwarnings(
                "ignore", "Transaction-based profiling is deprecated", DeprecationWarning
            )
            sentry_sdk.init(**options)
    except BadDsn:  # settings built with model_construct() skip our validator
        raise ConfigurationError("SENTRY_DSN: must be a Sentry DSN") from None
    # Also where the SDK's integration was wanted but is not on: sentry-sdk sets up an
    # integration at most once per process, never after an init() that disabled it.
    record_queries(
        breadcrumbs
        and queries is not None
        and sentry_sdk.get_client().get_integration(queries) is None
    )
    # One access-log line per request would become a breadcrumb of the server-wide scope
    # (the line is written after the request's scope closed): cost and noise, no value.
    ignore_logger(ACCESS_LOGGER)
    if settings.tracing_enabled:
        # Errors carry the OpenTelemetry trace of the request (trace_id, span_id) as their
        # Sentry trace context, so Sentry links them to the trace in your tracing backend.
        bridge_traces(current_trace_ids)
    else:
        unbridge_traces(current_trace_ids)
    logger.info(SENTRY_ENABLED, settings.environment, settings.service_version)
    return True


# sentry-sdk's framework integrations, by module and class; each is importable only
# where its framework is installed (a Starlette-only service has no FastAPI).
_FRAMEWORK_INTEGRATIONS = (
    ("sentry_sdk.integrations.starlette", "StarletteIntegration"),
    ("sentry_sdk.integrations.fastapi", "FastApiIntegration"),
)


def _framework_integrations() -> list[Integration]:
    """The SDK's Starlette and FastAPI integrations that can exist here, to switch off."""
    found: list[Integration] = []
    for module_name, class_name in _FRAMEWORK_INTEGRATIONS:
        try:
            module = importlib.import_module(module_name)
        except (ImportError, DidNotEnable):
            continue
        found.append(getattr(module, class_name)())
    return found


async def flush_sentry(timeout: float = FLUSH_TIMEOUT) -> None:
    """Send queued events, waiting at most `timeout` seconds, then close the client."""
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    # flush() blocks on the transport's worker thread; keep the event loop free meanwhile.
    await asyncio.to_thread(client.close, timeout)


def sentry_hooks(settings: ObservabilitySettings, lifecycle: Lifecycle) -> SentryHooks:
    """The Sentry concern for instrument(): client started and closed by the lifespan."""

    def start() -> None:
        init_sentry(settings)

    lifecycle.on_startup(start)
    lifecycle.on_shutdown(flush_sentry)
    return SentryHooks(
        transactions=settings.sentry_traces_sample_rate > 0,
        excluded_path=_policy_from(settings).excluded_path,
        continue_traces=settings.trace_context_policy == "continue",
    )


# --- per request -----------------------------------------------------------------------------


class _RequestScopes:
    """One request's Sentry scopes, and its performance transaction when there is one."""

    __slots__ = ("status_set", "tokens", "transaction")

    def __init__(self, tokens: tuple[Token[Any], Token[Any]] | None) -> None:
        self.tokens = tokens
        self.transaction: Any = None
        self.status_set = False


class SentryHooks(RequestHooks):
    """One Sentry isolation scope per request; unhandled exceptions captured once.

    Events sent while the request runs carry tags `request_id`, `trace_id` (when tracing
    is on) and `endpoint` (the route template), the route template as transaction name,
    and the request's method, URL, query and headers with secrets removed. All of that is
    computed by an event processor, so a request that sends no event pays only for the
    scope. The body is never read (sentry-python #1573).
    """

    name = "sentry"
    reads_routes = True
    keeps_context = True

    def __init__(
        self,
        *,
        transactions: bool = False,
        excluded_path: Callable[[str], bool] | None = None,
        continue_traces: bool = True,
    ) -> None:
        self.transactions = transactions
        self.excluded_path = excluded_path or compile_paths(())
        # The caller's Sentry trace headers to continue; under TRACE_CONTEXT_POLICY restart
        # or ignore, none (a caller's sentry-trace is not trusted either).
        self.incoming_trace: Callable[[Scope], dict[str, str]] = (
            trace_headers if continue_traces else _no_trace_headers
        )

    def start(self, exchange: Exchange) -> _RequestScopes:
        scope = exchange.scope
        processor = RequestEventProcessor(scope, exchange.entry, exchange.request_id)
        # A sampled span of our tracing gives events and outgoing requests their trace.
        own_trace = None if exchange.traced and exchange.trace_ids else self.incoming_trace(scope)
        state = _RequestScopes(enter_request_scopes(processor, own_trace))
        if self.transactions and not self.excluded_path(scope["path"]):
            continued = sentry_sdk.continue_trace(
                self.incoming_trace(scope),
                op=f"{scope['type']}.server",
                name=scope["path"],  # renamed to the route template once routing is done
                source=SOURCE_URL,
                origin="auto.http.amani_observability",
            )
            transaction = sentry_sdk.start_transaction(
                continued, custom_sampling_context={"asgi_scope": scope}
            )
            transaction.__enter__()  # what `with` does; left in finish()
            state.transaction = transaction
        return state

    def response_started(self, exchange: Exchange, state: _RequestScopes, message: Message) -> None:
        if state.transaction is not None and not state.status_set:
            state.status_set = True  # a second start is refused by the server
            if message["type"] != "websocket.accept":
                state.transaction.set_http_status(message["status"])

    def failed(self, exchange: Exchange, state: _RequestScopes, error: Exception) -> None:
        if state.transaction is not None:
            state.transaction.set_status("internal_error")
        capture_unhandled(error)

    def finish(self, exchange: Exchange, state: _RequestScopes) -> None:
        try:
            transaction = state.transaction
            if transaction is not None:
                transaction.name = exchange.settle_route() or UNMATCHED_ROUTE
                transaction.source = SOURCE_ROUTE
                transaction.__exit__(None, None, None)
        finally:
            exit_request_scopes(state.tokens)


class SentryMiddleware(Pipeline):
    """Sentry's per-request scopes and capture alone, as an ASGI middleware (the client is
    the service's: `init_sentry()`); instrument() runs the same hooks in one layer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        transactions: bool = False,
        excluded_path: Callable[[str], bool] | None = None,
        continue_traces: bool = True,
    ) -> None:
        hooks = SentryHooks(
            transactions=transactions,
            excluded_path=excluded_path,
            continue_traces=continue_traces,
        )
        super().__init__(app, (hooks,))


# What every request's scopes are forked from: two blank scopes, made once per process and
# never made current themselves, so nothing accumulates on them. Not the scopes of the
# context the request runs in: under uvicorn that is a copy of the server's context, which
# has none (the SDK would then build two new Scopes per request before we fork
# them), or one that start-up log lines filled with breadcrumbs (each fork would copy
# them). Data meant for every request belongs on the global scope, which events still get.
_blank_scopes: tuple[_SentryScope, _SentryScope] | None = None
# How a request's scope is forked from a blank one: the SDK's own copy, what Scope.fork()
# and copy.copy() run, called without their extra call.
_copy_scope: Callable[[_SentryScope], _SentryScope] = _SentryScope.__copy__


def _blank() -> tuple[_SentryScope, _SentryScope]:
    global _blank_scopes
    if _blank_scopes is None:
        current = _SentryScope(ty=ScopeType.CURRENT)
        # The current scope's own propagation context would win over the request's:
        # clear() drops it, so events and outgoing sentry-trace headers use the isolation
        # scope's.
        current.clear()
        _blank_scopes = (_SentryScope(ty=ScopeType.ISOLATION), current)
    return _blank_scopes


def enter_request_scopes(
    processor: Callable[[Any, Any], Any], trace_headers: dict[str, str] | None
) -> tuple[Token[Any], Token[Any]] | None:
    """Make a fresh isolation and current scope current for one request.

    What `sentry_sdk.isolation_scope()` does (fork both, make both current), without its
    generator context manager, plus what Sentry's ASGI integration does at the start of
    a request: a trace of its own, continuing an incoming `sentry-trace` header. With
    `trace_headers=None` the request keeps no Sentry trace of its own: the caller knows
    a sampled OpenTelemetry span will be current, whose ids events and outgoing requests
    then carry instead. None when the scopes could not be made: the request then runs
    in the scopes it came with, unchanged.
    """
    try:
        blank_isolation, blank_current = _blank_scopes or _blank()
        isolation = _copy_scope(blank_isolation)
        isolation.add_event_processor(processor)
        if trace_headers:
            isolation.generate_propagation_context(trace_headers)
        elif trace_headers is not None:
            isolation.set_new_propagation_context()  # ids are drawn only if ever read
        current = _copy_scope(blank_current)
    except Exception as exc:  # observability must never break the request
        _fallback_taken("Sentry request scopes", exc, "the request ran in the scopes it came with")
        return None
    return isolation_scope_var.set(isolation), current_scope_var.set(current)


def exit_request_scopes(tokens: tuple[Token[Any], Token[Any]] | None) -> None:
    if tokens is not None:
        current_scope_var.reset(tokens[1])
        isolation_scope_var.reset(tokens[0])


def capture_unhandled(exc: BaseException) -> None:
    """Report an exception escaping the app; never raise from here."""
    try:
        client = sentry_sdk.get_client()
        event, hint = event_from_exception(
            exc,
            client_options=client.options,
            mechanism={"type": "asgi", "handled": False},
        )
        sentry_sdk.capture_event(event, hint=hint)
    except Exception:  # pragma: no cover - the SDK guards itself; the app's error matters more
        logger.debug("could not report an exception to Sentry", exc_info=True)


def _endpoint(scope: Scope, entry: RouteEntry) -> str:
    return route_template(scope, entry) or UNMATCHED_ROUTE


def _no_trace_headers(scope: Scope) -> dict[str, str]:
    return {}


def trace_headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        if key == b"sentry-trace" or key == b"baggage":
            headers[key.decode("latin-1")] = value.decode("latin-1")
    return headers


class RequestEventProcessor:
    """The event processor of one request: everything an event needs, built on demand.

    A callable object rather than a closure: one GC-tracked object per request in flight
    instead of a function and a cell per variable it closes over.
    """

    __slots__ = ("__weakref__", "entry", "request_id", "scope")

    def __init__(self, scope: Scope, entry: RouteEntry, request_id: str | None) -> None:
        self.scope = scope
        self.entry = entry
        self.request_id = request_id

    def __call__(self, event: Any, hint: Any) -> Any:
        scope = self.scope
        endpoint = _endpoint(scope, self.entry)
        tags = event.setdefault("tags", {})
        if self.request_id is not None:
            tags["request_id"] = self.request_id
        tags.setdefault("endpoint", endpoint)
        trace_ids = current_trace_ids()
        if trace_ids is not None:
            tags["trace_id"] = trace_ids[0]
        if event.get("type") != "transaction" and (
            (event.get("transaction_info") or {}).get("source") != SOURCE_CUSTOM
        ):
            event["transaction"] = endpoint
            event["transaction_info"] = {"source": SOURCE_ROUTE}
        request = event.get("request") or {}
        event["request"] = {**_request_data(scope), **request}
        if isinstance(hint, dict):
            # Frame variables still hold the raw ASGI scope here (serialised later): let
            # before_send remove this request's secret values wherever they ended up.
            hint[_SECRETS_HINT] = _secret_values(scope)
        return event


def _request_data(scope: Scope) -> dict[str, Any]:
    redactor = _redactor
    headers: dict[str, str] = {}
    for raw_key, raw_value in scope.get("headers", ()):
        key = raw_key.decode("latin-1").lower()
        if key in _ADDRESS_HEADERS:
            continue
        value = REDACTED if redactor.secret_key(key) else raw_value.decode("latin-1")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    scheme = scope.get("scheme", "http")
    host = headers.get("host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else ""
    path = scope.get("root_path", "") + scope.get("path", "")
    data: dict[str, Any] = {
        "method": scope.get("method", "GET" if scope["type"] == "http" else "WEBSOCKET"),
        "url": f"{scheme}://{host}{quote(path)}" if host else quote(path),
        "headers": headers,
    }
    query = scope.get("query_string", b"")
    if query:
        data["query_string"] = redactor.query(query.decode("latin-1"))
    return data


def _secret_values(scope: Scope) -> list[str]:
    """The values of this request's secret headers and query parameters, longest first."""
    redactor = _redactor
    values: set[str] = set()
    for raw_key, raw_value in scope.get("headers", ()):
        key = raw_key.decode("latin-1").lower()
        if redactor.secret_key(key):
            value = raw_value.decode("latin-1")
            values.add(value)
            # "Bearer <token>", "a=1; b=2": the parts travel on their own too.
            values.update(re.split(r"[\s,;=]+", value))
    query = scope.get("query_string", b"")
    if query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if redactor.secret_key(name):
                values.add(value)
    # Short values ("1", "Bearer") would blank out unrelated text.
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def redacted_repr(value: Any, hints: Any) -> Any:
    """Global repr processor: how the SDK shows a value of a frame, breadcrumb or extra.

    Text, bytes and models whose redacted form differs are shown redacted (and whole: the
    SDK would cut a long value short, past where our later passes could parse it);
    everything else is left to the SDK.
    """
    if isinstance(value, (str, bytes, bytearray, memoryview)) or _is_model(value):
        try:
            redacted = _redactor.data(value)
        except Exception:
            return REDACTED
        if redacted is not value and redacted != value:
            return repr(redacted)
    return NotImplemented


def _is_model(value: Any) -> bool:
    return hasattr(type(value), "model_fields") or (
        is_dataclass(value) and not isinstance(value, type)
    )


def redact_event(event: Any, hint: Any) -> Any:
    """Global event processor: the event with every secret redacted (docs/security.md).

    Runs before the SDK's EventScrubber and serialiser (frame variables, serialised when
    the exception was captured, went through `redacted_repr`): framework body buffers are
    dropped, then every value under a secret key, inside nested data, JSON text, bytes,
    query strings and URLs, becomes `[redacted]`. An event that cannot be redacted is
    dropped rather than sent.
    """
    try:
        for frame in iter_event_frames(event):
            variables = frame.get("vars")
            module = frame.get("module") or ""
            if isinstance(variables, dict) and module.startswith(_FRAMEWORK_MODULES):
                for name in BODY_BUFFERS.intersection(variables):
                    variables[name] = REDACTED
        return _redacted_parts(event)
    except Exception:
        logger.warning(REDACTION_FAILED, exc_info=True)
        return None


def _redacting(before_send: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """before_send (or a service's before_send_transaction): redact the serialised event on
    both sides of the hook, so it sees no secret and nothing it adds leaves unredacted."""

    def redact_around(event: Any, hint: Any) -> Any:
        event = _redact_serialised(event, hint)
        kept = before_send(event, hint)
        if kept is None or before_send is before_send_handler:
            return kept  # our own filter only drops
        return _redact_serialised(kept, hint)

    return redact_around


def _redact_serialised(event: Any, hint: Any) -> Any:
    secrets = hint.get(_SECRETS_HINT) if isinstance(hint, dict) else None
    if secrets:
        event = _scrub_strings(event, secrets)
    return _redacted_parts(event)


def _redacted_parts(event: Any) -> Any:
    """The event redacted, apart from what only the SDK writes (package versions...)."""
    if not isinstance(event, dict):
        return _redactor.data(event)
    data = _redactor.data
    return {key: value if key in _SDK_OWNED else data(value) for key, value in event.items()}


def _without_own_traffic(
    before_breadcrumb: Callable[[Any, Any], Any] | None,
) -> Callable[[Any, Any], Any]:
    """before_breadcrumb: the library's own sends (alerts) leave no breadcrumb."""

    def keep(crumb: Any, hint: Any) -> Any:
        if is_own_traffic():
            return None
        return before_breadcrumb(crumb, hint) if before_breadcrumb is not None else crumb

    return keep


def _scrub_strings(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _scrub_strings(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_strings(item, secrets) for item in value]
    return value


# --- the API the guide calls -----------------------------------------------------------------


def capture_exception(
    exc: BaseException,
    context: Mapping[str, Any] | None = None,
    user_info: Mapping[str, Any] | None = None,
    *,
    context_name: str = CONTEXT_NAME,
) -> str | None:
    """Report a handled exception; return the Sentry event ID, or None when not sent.

    `context` becomes the event's context named `context_name` ("details") and
    `user_info` its user (`id`, `email`, `username`, ...). Both belong to this one event:
    a later event, in this request or another, does not carry them.
    """
    try:
        with sentry_sdk.new_scope() as scope:
            if context:
                scope.set_context(context_name, dict(context))
            if user_info:
                scope.set_user(dict(user_info))
            return scope.capture_exception(exc)
    except Exception:  # reporting must never turn into the caller's problem
        logger.debug("could not report an exception to Sentry", exc_info=True)
        return None


def add_breadcrumb(
    message: str,
    *,
    category: str | None = None,
    level: str = "info",
    data: Mapping[str, Any] | None = None,
) -> None:
    """Record a step on the current request's trail; shown with the next event it sends."""
    sentry_sdk.add_breadcrumb(
        message=message,
        category=category,
        level=level,
        data=dict(data) if data else None,
    )


def before_send_handler(event: Any, hint: Any) -> Any:
    """Sentry's `before_send`: drop noise, keep everything else.

    Dropped: events of requests to the excluded paths (`SENTRY_EXCLUDED_PATHS`, by
    default /metrics and /health, and `METRICS_PATH`), and HTTP exceptions whose status is
    below 500 unless listed in `SENTRY_REPORT_STATUS_CODES`. 5xx always report. A service
    can wrap it: call it first and return None when it does.
    """
    policy = _policy
    request = event.get("request")
    if isinstance(request, Mapping):
        url = request.get("url")
        if isinstance(url, str) and url and policy.excluded_path(urlsplit(url).path or "/"):
            return None
    status = http_status_of(hint.get("exc_info") if isinstance(hint, Mapping) else None)
    if status is not None and status < 500 and status not in policy.report_status_codes:
        return None
    return event


def http_status_of(exc_info: Any) -> int | None:
    """The HTTP status an exception stands for, or None when it is not an HTTP error.

    Starlette's and FastAPI's HTTPException (`status_code`), Werkzeug-style
    HTTPException (`code`) and FastAPI's RequestValidationError (422).
    """
    if not exc_info or len(exc_info) < 2 or exc_info[1] is None:
        return None
    exc = exc_info[1]
    for cls in type(exc).__mro__:
        name = cls.__name__
        if name in ("RequestValidationError", "WebSocketRequestValidationError"):
            return 422
        if name == "HTTPException":
            code = getattr(exc, "status_code", None)
            if code is None:
                code = getattr(exc, "code", None)
            if isinstance(code, int) and 100 <= code <= 599:
                return code
            return None
    return None
