"""instrument(): compose the middlewares once, in one fixed order, and hook the lifespan.

Order, outermost first (each layer sees everything inside it):

    RequestIDMiddleware    the ID exists before anything logs; it stamps every response,
                           the unhandled-error 500 included, and writes the access log
    tracing middleware     the server span is current for Sentry, metrics and logs
    Sentry middleware      per-request isolation scope; captures escaping exceptions
    metrics middleware     serves /metrics; measures the app below it
    the application        for Starlette/FastAPI: its whole stack, ServerErrorMiddleware included

With two or more of them on, StackMiddleware (_stack.py) sits in front and does their
per-request work for HTTP requests in one layer, in this same order.

Start-up work (tracer provider, Sentry client, alert dispatcher) runs at lifespan
start-up, not at import or in instrument(), so fork-based servers get fresh exporters
per worker; shutdown flushes and closes them with a bounded wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from ._asgi import ASGIApp, Message, Receive, Scope, Send
from ._redaction import redactor_for
from ._stack import StackMiddleware
from ._startup import ENV_TYPO, env_typos, server_warnings, summary
from .exceptions import ConfigurationError
from .logs import AccessLog, configure_logging
from .request_id import RequestIDMiddleware
from .settings import ObservabilitySettings

logger = logging.getLogger("amani_observability")

_MARK = "_amani_observability_instrumented"
# Seconds each shutdown hook may take before we stop waiting for it.
SHUTDOWN_TIMEOUT = 5.0

AppT = TypeVar("AppT")
Layer = Callable[[ASGIApp], ASGIApp]
# A layer and what it is: "request_id", "tracing", "sentry" or "metrics".
_Kind = Literal["request_id", "tracing", "sentry", "metrics"]


class Lifecycle:
    """Start-up and shutdown hooks the components register while instrument() runs."""

    def __init__(self) -> None:
        self.startup_hooks: list[Callable[[], None]] = []
        # Each hook with the seconds shutdown waits for it.
        self.shutdown_hooks: list[tuple[Callable[[], Awaitable[None]], float]] = []
        # Each names a fast path in use, for the start-up summary; asked after start-up.
        self.fast_paths: list[Callable[[], str]] = []
        self.started = False

    def on_startup(self, hook: Callable[[], None]) -> None:
        self.startup_hooks.append(hook)

    def on_shutdown(
        self, hook: Callable[[], Awaitable[None]], *, timeout: float = SHUTDOWN_TIMEOUT
    ) -> None:
        self.shutdown_hooks.append((hook, timeout))

    def report_fast_path(self, describe: Callable[[], str]) -> None:
        self.fast_paths.append(describe)

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for hook in self.startup_hooks:
            hook()

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        # Last started, first stopped.
        for hook, timeout in reversed(self.shutdown_hooks):
            try:
                await asyncio.wait_for(hook(), timeout)
            except Exception:
                # Shutdown goes on: one stuck exporter must not keep the others from flushing.
                logger.exception("observability shutdown hook %r failed", hook)


def instrument(app: AppT, settings: ObservabilitySettings | None = None) -> AppT:
    """Add request IDs, JSON logs, metrics, tracing and Sentry to an ASGI app.

    Starlette and FastAPI apps are changed in place and returned; any other ASGI
    callable is returned wrapped. Call it once per app, at start-up.
    """
    if settings is None:
        settings = ObservabilitySettings()
    elif not isinstance(settings, ObservabilitySettings):
        raise ConfigurationError(
            f"instrument() takes an ObservabilitySettings, not {type(settings).__name__}"
        )
    if getattr(app, _MARK, False):
        raise ConfigurationError(
            "instrument() was already called on this app; a second call would count every "
            "request twice. Call it once, at start-up."
        )
    configure_logging(settings)
    _warn_about_the_start(settings)

    lifecycle = Lifecycle()
    layers = _build_layers(settings, lifecycle)
    if len(layers) >= 2:
        lifecycle.report_fast_path(lambda: "one-layer stack")
    # Last: it reports what the other start-up hooks set up.
    lifecycle.on_startup(lambda: logger.info(_summary(settings, lifecycle)))

    def wrap(inner: ASGIApp) -> ASGIApp:
        # The middlewares composed in order, and in front of them the one layer that does
        # their work for HTTP requests in a single pass (see _stack.py).
        outer = inner
        built: dict[str, Any] = {}
        for kind, layer in layers:  # innermost first
            outer = built[kind] = layer(outer)
        if len(built) < 2:
            return outer  # one middleware alone is already one layer, and leaner
        return StackMiddleware(
            outer,
            inner,
            request_ids=built.get("request_id"),
            tracing=built.get("tracing"),
            sentry=built.get("sentry"),
            metrics=built.get("metrics"),
        )

    if _is_starlette(app):
        return _instrument_starlette(app, wrap, lifecycle)  # type: ignore[no-any-return]
    if not callable(app):
        raise ConfigurationError(f"instrument() needs an ASGI app, not {type(app).__name__}")
    wrapped = _LifespanMiddleware(wrap(app), lifecycle)
    setattr(wrapped, _MARK, True)
    return wrapped  # type: ignore[return-value]


# The start-up warnings already logged by this process: each is said once.
_warned: set[str] = set()


def _report_stale_multiprocess_files() -> None:
    """Once per worker: files of a previous run in PROMETHEUS_MULTIPROC_DIR (_multiproc.py)."""
    from ._multiproc import STALE_FILES, server_start_time, stale_files

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    files, processes = stale_files(directory, server_start_time())
    if files:
        logger.warning(STALE_FILES, directory, files, processes)


def _warn_about_the_start(settings: ObservabilitySettings) -> None:
    """Warn, once per process, about env-name typos and servers started in a way that
    breaks per-process observability."""
    for variable, meant in env_typos(os.environ):
        message = ENV_TYPO % (variable, meant)
        if message not in _warned:
            _warned.add(message)
            logger.warning(message)
    for message in server_warnings(os.environ, sys.argv, metrics_enabled=settings.metrics_enabled):
        if message not in _warned:
            _warned.add(message)
            logger.warning(message)


def _summary(settings: ObservabilitySettings, lifecycle: Lifecycle) -> str:
    fast_paths = []
    for describe in lifecycle.fast_paths:
        try:
            fast_paths.append(describe())
        except Exception:  # a summary must never stop a start-up
            logger.debug("could not describe a fast path", exc_info=True)
    return summary(settings, fast_paths, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _build_layers(
    settings: ObservabilitySettings, lifecycle: Lifecycle
) -> list[tuple[_Kind, Layer]]:
    """The middleware factories, innermost first. Each component is built once here."""
    layers: list[tuple[_Kind, Layer]] = []

    # alerts: no middleware layer. Registered first so the dispatcher starts before the
    # other components and is drained last (they may alert while shutting down).
    from .alerts import AlertDispatcher

    dispatcher = AlertDispatcher(settings)
    lifecycle.on_startup(dispatcher.start)
    # The drain has its own deadline (ALERT_SHUTDOWN_TIMEOUT_SECONDS); the usual hook wait
    # on top lets it count what is lost and close its connections after that.
    lifecycle.on_shutdown(
        dispatcher.aclose, timeout=settings.alert_shutdown_timeout_seconds + SHUTDOWN_TIMEOUT
    )

    # event-loop lag and stalls: no middleware layer, nothing per request
    if settings.loop_monitor_interval_seconds > 0:
        from ._loop_monitor import LoopMonitor
        from .metrics import event_loop_lag_seconds, event_loop_stalls_total

        monitor = LoopMonitor(
            settings.loop_monitor_interval_seconds,
            settings.loop_stall_seconds,
            observe_lag=event_loop_lag_seconds.observe,
            count_stall=event_loop_stalls_total.inc,
        )
        lifecycle.on_startup(monitor.start)
        lifecycle.on_shutdown(monitor.stop)

    # metrics (innermost): see metrics.py
    if settings.metrics_enabled:
        from ._losses import declare_known_losses
        from .metrics import metrics_layer

        declare_known_losses()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            lifecycle.on_startup(_report_stale_multiprocess_files)

        layers.append(("metrics", metrics_layer(settings, lifecycle)))

    # Sentry: see sentry.py
    if settings.sentry_dsn is not None:
        from .sentry import sentry_layer

        layers.append(("sentry", sentry_layer(settings, lifecycle)))
    else:
        # Say so once, without importing sentry_sdk for a feature that is off.
        lifecycle.on_startup(
            lambda: logger.info("Sentry error tracking is off: SENTRY_DSN is not set")
        )

    # tracing: see tracing.py
    if settings.tracing_enabled:
        from .tracing import tracing_layer

        layers.append(("tracing", tracing_layer(settings, lifecycle)))

    access_log = (
        AccessLog(
            excluded_paths=_access_log_excluded_paths(settings),
            redactor=redactor_for(tuple(settings.redact_keys)),
        )
        if settings.access_log_enabled
        else None
    )
    if settings.request_id_enabled or access_log is not None:
        header = settings.request_id_header
        layers.append(
            (
                "request_id",
                lambda inner: RequestIDMiddleware(inner, header=header, access_log=access_log),
            )
        )
    return layers


def _access_log_excluded_paths(settings: ObservabilitySettings) -> list[str]:
    """ACCESS_LOG_EXCLUDED_PATHS; left unset, the metrics endpoint (wherever METRICS_PATH
    puts it) and /health, so scrapes and probes do not drown the log."""
    if "access_log_excluded_paths" in settings.model_fields_set:
        return list(settings.access_log_excluded_paths)
    return [re.escape(settings.metrics_path), "/health"]


def _is_starlette(app: object) -> bool:
    try:
        from starlette.applications import Starlette
    except ImportError:  # pragma: no cover - starlette is a dependency
        return False
    return isinstance(app, Starlette)


def _instrument_starlette(
    app: Any, wrap: Callable[[ASGIApp], ASGIApp], lifecycle: Lifecycle
) -> Any:
    # Wrap the *built* stack instead of add_middleware(): our layers then sit outside
    # ServerErrorMiddleware (so its 500 gets a request ID), and instrument() works
    # even after the stack was built, where add_middleware() raises
    # "Cannot add middleware after an application has started".
    build_original = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return wrap(build_original())

    app.build_middleware_stack = build_middleware_stack
    if app.middleware_stack is not None:
        app.middleware_stack = wrap(app.middleware_stack)
        # Lifespan start-up has been and gone: start our components now.
        lifecycle.start()

    lifespan_original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(inner_app: Any) -> AsyncIterator[Any]:
        # Ours start before the app's start-up (so it can send alerts or spans) and stop
        # after its shutdown.
        lifecycle.start()
        try:
            async with lifespan_original(inner_app) as state:
                yield state
        finally:
            await lifecycle.stop()

    app.router.lifespan_context = lifespan
    setattr(app, _MARK, True)
    return app


class _LifespanMiddleware:
    """Runs the lifecycle hooks for ASGI apps that are not Starlette applications."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
        else:
            await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Apart from __call__: the closures below give this coroutine's frame cells,
        # made on every call; in __call__ that would be four per HTTP request.
        lifecycle = self.lifecycle
        forwarded_startup = False

        async def receive_with_hooks() -> Message:
            nonlocal forwarded_startup
            message = await receive()
            if message["type"] == "lifespan.startup":
                lifecycle.start()
                forwarded_startup = True
            return message

        async def send_with_hooks(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await lifecycle.stop()
            await send(message)

        try:
            await self.app(scope, receive_with_hooks, send_with_hooks)
        except Exception:
            if forwarded_startup:
                raise
            # The app does not speak the lifespan protocol: speak it for our own hooks.
            await _serve_lifespan(receive, send, lifecycle)


async def _serve_lifespan(receive: Receive, send: Send, lifecycle: Lifecycle) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            lifecycle.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
