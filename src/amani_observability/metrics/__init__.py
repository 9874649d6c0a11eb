"""The Prometheus metric catalogue, /metrics, database timing and multiprocess support.

Business code imports the metrics by name, exactly as the monitoring guide shows::

    from amani_observability.metrics import escrow_transactions_total

    escrow_transactions_total.labels(type="hold", status="success").inc()

The metrics live in prometheus_client's default registry, so a service's own
metrics appear on the same /metrics. Creation is get-or-create: importing this
module again, building several apps or calling instrument() on new apps in one
process never raises "Duplicated timeseries". The guide's business counters
(escrow_transactions_total, user_registrations_total, kyc_submissions_total) are
registered on first import by name only, so a service that never imports them does
not expose them; `from amani_observability.metrics import *` leaves them out.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

from .._asgi import ASGIApp
from .._fallbacks import fallback_taken as _fallback_taken
from .._pipeline import Pipeline
from .._prometheus_seam import children_of as _children_of
from .._registry import get_or_create as _get_or_create
from ..settings import DEFAULT_BUCKETS
from ._histograms import db_duration_histogram, http_duration_histogram
from ._middleware import MetricsEndpoint, PrometheusHooks
from ._multiproc import multiprocess_dir

__all__ = [
    "MetricsEndpoint",
    "PrometheusMiddleware",
    "db_connections_active",
    "db_query_duration_seconds",
    "errors_total",
    "event_loop_lag_seconds",
    "event_loop_stalls_total",
    "http_request_duration_seconds",
    "http_requests_in_progress",
    "http_requests_total",
    "instrument_sqlalchemy",
    "mark_process_dead",
    "track_db_query",
]

logger = logging.getLogger("amani_observability.metrics")

F = TypeVar("F", bound=Callable[..., Any])


# --- the catalogue (names, types and labels are the guide's contract) ---------------------

http_requests_total = _get_or_create(
    Counter,
    "http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    labelnames=("method", "endpoint", "status"),
)
http_request_duration_seconds = http_duration_histogram(DEFAULT_BUCKETS)
# livesum: in multiprocess mode, the sum over live workers is the one meaningful number.
http_requests_in_progress = _get_or_create(
    Gauge,
    "http_requests_in_progress",
    "HTTP requests being handled right now.",
    labelnames=("method", "endpoint"),
    multiprocess_mode="livesum",
)
db_connections_active = _get_or_create(
    Gauge,
    "db_connections_active",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)
db_query_duration_seconds = db_duration_histogram(DEFAULT_BUCKETS)
# The guide's business counters: name -> (documentation, labels), made by __getattr__.
_BUSINESS_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "escrow_transactions_total": ("Escrow transactions, by type and outcome.", ("type", "status")),
    "user_registrations_total": ("User registrations.", ()),
    "kyc_submissions_total": ("KYC submissions, by status.", ("status",)),
}


def __getattr__(name: str) -> Counter:
    # PEP 562: a business counter is registered when a service first imports it by name.
    if name not in _BUSINESS_COUNTERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    documentation, labelnames = _BUSINESS_COUNTERS[name]
    counter = _get_or_create(Counter, name, documentation, labelnames=labelnames)
    globals()[name] = counter
    return counter


def __dir__() -> list[str]:
    return sorted({*globals(), *_BUSINESS_COUNTERS})


errors_total = _get_or_create(
    Counter,
    "errors_total",
    "Unhandled exceptions, by exception class name and route template.",
    labelnames=("error_type", "endpoint"),
)
# From a few milliseconds (a busy loop) to the seconds of a blocking call.
EVENT_LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
event_loop_lag_seconds = _get_or_create(
    Histogram,
    "event_loop_lag_seconds",
    "How late the event loop ran a callback scheduled every LOOP_MONITOR_INTERVAL_SECONDS.",
    buckets=EVENT_LOOP_LAG_BUCKETS,
)
event_loop_stalls_total = _get_or_create(
    Counter,
    "event_loop_stalls_total",
    "Times the event loop was blocked for LOOP_STALL_SECONDS or longer.",
)


# --- the concern instrument() runs innermost -----------------------------------------------


class PrometheusMiddleware(Pipeline):
    """The request metrics and the metrics endpoint alone, as an ASGI middleware;
    instrument() runs the same hooks with the other concerns in one layer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics_path: str | None = "/metrics",
        excluded_paths: Sequence[str] = (),
        endpoint: MetricsEndpoint | None = None,
    ) -> None:
        """Measure `app` into this module's request metrics; serve `endpoint` (by default an
        unprotected one) at `metrics_path` (None: serve nothing)."""
        hooks = self.hooks_for(
            metrics_path=metrics_path, excluded_paths=excluded_paths, endpoint=endpoint
        )
        super().__init__(app, (hooks,))

    @staticmethod
    def hooks_for(
        *,
        metrics_path: str | None,
        excluded_paths: Sequence[str],
        endpoint: MetricsEndpoint | None,
    ) -> PrometheusHooks:
        """The hooks this middleware runs, recording to the catalogue's request metrics as
        they are now (a METRICS_BUCKETS change replaces the duration histogram)."""
        return PrometheusHooks(
            requests_total=http_requests_total,
            duration=http_request_duration_seconds,
            in_progress=http_requests_in_progress,
            errors_total=errors_total,
            metrics_path=metrics_path,
            excluded_paths=excluded_paths,
            endpoint=endpoint,
        )


# --- multiple worker processes ------------------------------------------------------------


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead worker's live gauges from the multiprocess totals.

    Call it from gunicorn's ``child_exit`` hook (see docs/metrics.md). Without
    PROMETHEUS_MULTIPROC_DIR (and no `path`) it does nothing.
    """
    path = path or multiprocess_dir()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


# --- database metrics ---------------------------------------------------------------------


class track_db_query:  # lower case: it reads like a function, track_db_query("select")
    """Time a database call into ``db_query_duration_seconds{operation}``.

    A context manager (``with`` and ``async with``) and a decorator for plain and
    async functions. The duration is observed whether or not the call raised.
    """

    __slots__ = ("_operation", "_started")

    def __init__(self, operation: str) -> None:
        self._operation = operation
        self._started: list[float] = []

    def _observe(self, started: float) -> None:
        _observe_duration(self._operation, perf_counter() - started)

    def __enter__(self) -> track_db_query:
        # A stack, so one object may be entered again (nested or reused) safely.
        self._started.append(perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._observe(self._started.pop())

    async def __aenter__(self) -> track_db_query:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        # Each call times itself with a local start, so concurrent calls never mix.
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[..., Awaitable[Any]], func)

            @functools.wraps(func)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = perf_counter()
                try:
                    return await async_func(*args, **kwargs)
                finally:
                    self._observe(started)

            return cast(F, timed_async)

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self._observe(started)

        return cast(F, timed)


_SQL_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
_instrumented_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def _sql_operation(statement: str) -> str:
    """SELECT, INSERT, UPDATE, DELETE or OTHER: the label, never the SQL text."""
    word = statement.lstrip()[:6].upper()
    return word if word in _SQL_OPERATIONS else "OTHER"


def instrument_sqlalchemy(engine: Any) -> Any:
    """Measure a SQLAlchemy engine (sync ``Engine`` or ``AsyncEngine``); returns it.

    Pool checkout and checkin drive ``db_connections_active``; every cursor execution,
    failed ones included, observes ``db_query_duration_seconds`` with `operation`
    SELECT, INSERT, UPDATE, DELETE or OTHER. Calling it again on the same engine does
    nothing.

    The queries are timed through the dialect's ``do_execute`` events, whose listener
    runs the statement (see docs/metrics.md); SQLAlchemy stops at it, so a
    ``do_execute`` listener of yours on the same engine must be added before this call.
    """
    from sqlalchemy import event

    sync_engine = getattr(engine, "sync_engine", engine)
    if sync_engine in _instrumented_engines:
        return engine
    _instrumented_engines.add(sync_engine)
    checked_out, checked_in = db_connections_active.inc, db_connections_active.dec

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        checked_out()

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        checked_in()

    def on_detach(dbapi_connection: Any, record: Any) -> None:
        # A detached connection never comes back through checkin.
        checked_in()

    # The queries are timed at the dialect, not with the Connection's
    # before/after_cursor_execute: one listener there makes every Connection of the
    # engine dispatch all of its events on every query, where the dialect's events cost
    # a loop over this one listener (docs/performance.md has the figures).
    dialect = sync_engine.dialect

    def timing(run: Callable[..., Any]) -> Callable[..., bool]:
        """A listener for the dialect event of `run`: runs the statement as `run` does
        (the same arguments), timed."""

        def timed(cursor: Any, statement: str, *parameters_and_context: Any) -> bool:
            started = perf_counter()
            try:
                run(cursor, statement, *parameters_and_context)
            finally:
                _observe_query(statement, started)
            return True  # executed: the dialect's own method is skipped

        return timed

    event.listen(sync_engine, "checkout", on_checkout)
    event.listen(sync_engine, "checkin", on_checkin)
    event.listen(sync_engine, "detach", on_detach)
    event.listen(sync_engine, "do_execute", timing(dialect.do_execute))
    event.listen(sync_engine, "do_executemany", timing(dialect.do_executemany))
    event.listen(sync_engine, "do_execute_no_params", timing(dialect.do_execute_no_params))
    return engine


def _observe_query(statement: str, started: float) -> None:
    elapsed = perf_counter() - started
    _observe_duration(_sql_operation(statement), elapsed)


# Per operation: (the histogram, its child, the child's key).
_query_series: dict[str, tuple[Histogram, Any, tuple[str]]] = {}


def _observe_duration(operation: str, seconds: float) -> None:
    """One query's duration in db_query_duration_seconds{operation}; never raises.

    The child is cached per operation, because .labels() costs more than the observation.
    The cache is checked against the histogram's own children: use_buckets() replaces the
    histogram, and clear() drops its children. Where those are not the dict we know,
    .labels().observe() does the work.
    """
    histogram = db_query_duration_seconds
    try:
        children = _children_of(histogram)
        if children is None:
            histogram.labels(operation).observe(seconds)
            return
        series = _query_series.get(operation)
        if series is None or series[0] is not histogram or children.get(series[2]) is not series[1]:
            series = (histogram, histogram.labels(operation), (operation,))
            _query_series[operation] = series
        series[1].observe(seconds)
    except Exception as exc:  # a measurement must never fail the query it measures
        _fallback_taken(
            "db_query_duration_seconds observation", exc, "the query's duration is not recorded"
        )
