"""instrument(): build each concern's hooks once, in one fixed order, and hook the lifespan.

One Pipeline (_pipeline.py) runs the concerns that are on, outermost first (each sees
everything after it):

    request ID     the ID exists before anything logs; it stamps every response, the
                   unhandled-error 500 included
    access log     one line per request, naming its ID and trace
    tracing        the server span is current for Sentry, metrics and logs
    Sentry         per-request isolation scope; captures escaping exceptions
    metrics        serves /metrics; measures the app
    the application  for Starlette/FastAPI: its whole stack, ServerErrorMiddleware included

Start-up work (tracer provider, Sentry client, alert dispatcher) runs at lifespan
start-up (_lifecycle.py), not at import or in instrument().
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ._access_log import AccessLog, AccessLogHooks
from ._asgi import ASGIApp
from ._lifecycle import SHUTDOWN_TIMEOUT, Lifecycle, LifespanMiddleware
from ._pipeline import Pipeline, RequestHooks
from ._redaction import redactor_for
from ._request_ids import RequestIDHooks
from ._startup import ENV_TYPO, env_typos, server_warnings, summary
from .exceptions import ConfigurationError
from .logs import configure_logging
from .settings import ObservabilitySettings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

logger = logging.getLogger("amani_observability")

_MARK = "_amani_observability_instrumented"

AppT = TypeVar("AppT")


def instrument(
    app: AppT,
    settings: ObservabilitySettings | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
) -> AppT:
    """Add request IDs, JSON logs, metrics, tracing and Sentry to an ASGI app.

    Starlette and FastAPI apps are changed in place and returned; any other ASGI
    callable is returned wrapped. Call it once per app, at start-up.

    `tracer_provider`: the service's own TracerProvider, used for the server spans and
    `get_tracer()`; it is not installed globally and never shut down by the library.
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
    hooks = _build_hooks(settings, lifecycle, tracer_provider)
    # Last: it reports what the other start-up hooks set up.
    lifecycle.on_startup(lambda: logger.info(_summary(settings, lifecycle)))

    def wrap(inner: ASGIApp) -> ASGIApp:
        return Pipeline(inner, hooks) if hooks else inner

    if _is_starlette(app):
        return _instrument_starlette(app, wrap, lifecycle)  # type: ignore[no-any-return]
    if not callable(app):
        raise ConfigurationError(f"instrument() needs an ASGI app, not {type(app).__name__}")
    wrapped = LifespanMiddleware(wrap(app), lifecycle)
    setattr(wrapped, _MARK, True)
    return wrapped  # type: ignore[return-value]


# The start-up warnings already logged by this process: each is said once.
_warned: set[str] = set()


def _report_stale_multiprocess_files() -> None:
    """Once per worker: files of a previous run in PROMETHEUS_MULTIPROC_DIR (_multiproc.py)."""
    from .metrics._multiproc import STALE_FILES, server_start_time, stale_files

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


def _build_hooks(
    settings: ObservabilitySettings,
    lifecycle: Lifecycle,
    tracer_provider: TracerProvider | None,
) -> list[RequestHooks]:
    """The concerns that are on, outermost first. Each is built once here, innermost
    first, so that its start-up hooks run in that order."""
    hooks: list[RequestHooks] = []

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
        from .metrics._concern import metrics_hooks

        declare_known_losses()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            lifecycle.on_startup(_report_stale_multiprocess_files)

        hooks.append(metrics_hooks(settings, lifecycle))

    # Sentry: see sentry.py
    if settings.sentry_dsn is not None:
        from .sentry._core import sentry_hooks

        hooks.append(sentry_hooks(settings, lifecycle))
    else:
        # Say so once, without importing sentry_sdk for a feature that is off.
        lifecycle.on_startup(
            lambda: logger.info("Sentry error tracking is off: SENTRY_DSN is not set")
        )

    # tracing: see tracing.py
    if settings.tracing_enabled:
        from .tracing._hooks import tracing_hooks

        hooks.append(tracing_hooks(settings, lifecycle, tracer_provider))

    if settings.access_log_enabled:
        access_log = AccessLog(
            excluded_paths=_access_log_excluded_paths(settings),
            redactor=redactor_for(tuple(settings.redact_keys)),
        )
        hooks.append(AccessLogHooks(access_log))
    # The access line names the request, so an access log brings request IDs with it.
    if settings.request_id_enabled or settings.access_log_enabled:
        hooks.append(RequestIDHooks(settings.request_id_header))
    hooks.reverse()
    return hooks


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
