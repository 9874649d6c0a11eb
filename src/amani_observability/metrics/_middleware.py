"""PrometheusMiddleware (measures every HTTP request) and MetricsEndpoint (serves /metrics).

Label values are bounded by construction: `endpoint` is the route template read from
the scope after routing (every unmatched request shares UNMATCHED_ROUTE), `method` is
one of the nine standard methods or "_OTHER", and `status` is the code actually sent.
The clock stops at the final response body message, so background tasks that
Starlette runs after it do not count as latency.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool

from .._asgi import (
    KNOWN_METHODS,
    OTHER_METHOD,
    UNMATCHED_ROUTE,
    ASGIApp,
    Receive,
    Scope,
    Send,
    compile_paths,
    header_value,
)
from .._correlation import TraceIds
from .._pipeline import Exchange, RequestHooks
from .._prometheus_seam import values_in_memory
from .._routes import table_of

logger = logging.getLogger("amani_observability.metrics")

# Every request past METRICS_MAX_ENDPOINTS distinct endpoint values shares this one.
OVERFLOW_ROUTE = "<overflow>"
ENDPOINTS_OVERFLOW = (
    "More than %d distinct endpoint label values in this process (METRICS_MAX_ENDPOINTS): "
    'requests to further endpoints are counted under endpoint="%s"'
)
DEFAULT_MAX_ENDPOINTS = 1000


class EndpointCap:
    """The distinct `endpoint` label values of this process, at most `limit` of them.

    Route templates keep labels bounded; this bounds them whatever a router reports (a
    service with thousands of routes, a router that names routes by their path), as the
    OpenTelemetry metrics SDK's cardinality limit does. UNMATCHED_ROUTE and OVERFLOW_ROUTE
    are always allowed and do not count.
    """

    def __init__(self, limit: int = DEFAULT_MAX_ENDPOINTS) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.warned = False

    def label(self, template: str) -> str:
        """`template`, or OVERFLOW_ROUTE once `limit` other values are in use."""
        if template in self.seen or template in (UNMATCHED_ROUTE, OVERFLOW_ROUTE):
            return template
        if len(self.seen) >= self.limit:
            if not self.warned:
                self.warned = True
                logger.warning(ENDPOINTS_OVERFLOW, self.limit, OVERFLOW_ROUTE)
            return OVERFLOW_ROUTE
        self.seen.add(template)
        return template

    def reset(self, limit: int = DEFAULT_MAX_ENDPOINTS) -> None:
        self.limit = limit
        self.seen.clear()
        self.warned = False


# One per process: the label values belong to the process's registry, not to one app.
endpoint_cap = EndpointCap()

# OpenMetrics allows 128 characters of exemplar label names and values together;
# "trace_id" and "span_id" take 15 of them. Real IDs (32 + 16 hex digits) always fit.
_EXEMPLAR_ID_ROOM = 128 - len("trace_id") - len("span_id")

# Per (method, template, status): the counter's inc and the histogram's observe, of the
# label children.
_Series = tuple[Callable[[], None], Callable[..., None]]


# (enter, leave) of one in-progress gauge child.
_Gauge = tuple[Callable[[Any], None], Callable[[], Any]]
_IN_FLIGHT = "_amani_in_flight"


def _in_progress(child: Any) -> _Gauge:
    """Enter/leave callables for an in-progress gauge child.

    In one process the child reads its value from a deque at scrape time: append()
    and pop() are atomic C calls, about ten times cheaper than two locked increments.
    Every middleware sharing the child shares its deque. In multiprocess mode the
    value must live in prometheus_client's files, so the child is incremented.
    """
    if not values_in_memory():
        inc, dec = child.inc, child.dec
        return (lambda _: inc()), dec
    in_flight: deque[None] | None = getattr(child, _IN_FLIGHT, None)
    if in_flight is None:
        in_flight = deque()
        setattr(child, _IN_FLIGHT, in_flight)
        child.set_function(in_flight.__len__)
    return in_flight.append, in_flight.pop


class _Measure:
    """One measured request: its method label, in-progress gauge and clock."""

    __slots__ = ("clock", "finished", "gauge", "method")

    def __init__(self, method: str, gauge: _Gauge, clock: float) -> None:
        self.method = method
        self.gauge = gauge
        self.clock = clock
        self.finished = False


class PrometheusHooks(RequestHooks):
    """Count, time and track in-progress HTTP requests; serve the metrics endpoint."""

    name = "metrics"
    reads_routes = True

    def __init__(
        self,
        *,
        requests_total: Any,
        duration: Any,
        in_progress: Any,
        errors_total: Any,
        metrics_path: str | None = "/metrics",
        excluded_paths: Iterable[str] = (),
        endpoint: MetricsEndpoint | None = None,
    ) -> None:
        """Record to the four metrics; serve `endpoint` (by default an unprotected one) at
        `metrics_path` (None: serve nothing)."""
        if metrics_path is not None and endpoint is None:
            endpoint = MetricsEndpoint()
        self.metrics_path = metrics_path
        self.endpoint = endpoint
        # The scrape itself is answered before this check, so it is never measured.
        self.excluded = compile_paths(excluded_paths)
        self.requests_total = requests_total
        self.duration = duration
        self.in_progress = in_progress
        self.errors_total = errors_total
        # Label children, created once per label combination, because .labels() costs
        # several times a cached child. Every key part is bounded, so these stay small.
        self._finished: dict[tuple[str, str, int], _Series] = {}
        self._gauges: dict[tuple[str, str], _Gauge] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        self._routes = _RoutePredictor()

    def serves(self, path: str) -> ASGIApp | None:
        return self.endpoint if path == self.metrics_path else None

    def start(self, exchange: Exchange) -> _Measure | None:
        path = exchange.path
        if exchange.scope["type"] != "http" or path == self.metrics_path or self.excluded(path):
            return None  # websockets are not HTTP requests; scrapes are not measured
        method, gauge = self.begin(exchange.scope, path, exchange.entry[0])
        return _Measure(method, gauge, perf_counter())

    def response_finished(self, exchange: Exchange, state: _Measure) -> None:
        state.finished = True
        self.record(
            state.method, exchange.status, state.clock, state.gauge, exchange.settle_route(),
            exchange.trace(),
        )  # fmt: skip

    def failed(self, exchange: Exchange, state: _Measure, error: Exception) -> None:
        if not state.finished:
            self.response_finished(exchange, state)
        if not exchange.client_gone:
            self.count_error(type(error).__name__, exchange.settle_route() or UNMATCHED_ROUTE)

    def finish(self, exchange: Exchange, state: _Measure) -> None:
        if not state.finished:
            # Returned without a final body (a stream cut short, no response at all), or
            # cancelled: still count the request and balance the gauge.
            self.response_finished(exchange, state)

    def begin(self, scope: Scope, path: str, app: Any) -> tuple[str, _Gauge]:
        """Count the request in progress; its method label and in-progress gauge."""
        method = scope["method"]
        if method not in KNOWN_METHODS:
            method = OTHER_METHOD
        # The router has not run yet, so the gauge's endpoint is predicted from the
        # app's route table; the same child is decremented, whatever the router decides.
        gauge_key = (method, self._routes.predict(app, path))
        gauge = self._gauges.get(gauge_key)
        if gauge is None:
            label = endpoint_cap.label(gauge_key[1])
            gauge = self._gauges.get((method, label))
            if gauge is None:
                gauge = _in_progress(self.in_progress.labels(method, label))
                self._gauges[(method, label)] = gauge
        gauge[0](None)
        return method, gauge

    def record(
        self,
        method: str,
        status: int,
        started: float,
        gauge: _Gauge,
        route: str | None,
        trace: TraceIds | None,
    ) -> str:
        """Record one finished request; returns its endpoint label.

        `route` is the matched route template (None: no route matched) and `trace` the
        request's sampled (trace_id, span_id), for the exemplar.
        """
        elapsed = perf_counter() - started
        gauge[1]()
        template = route or UNMATCHED_ROUTE
        # No status sent: the app raised or returned before responding, and the
        # server answers 500.
        code = status or 500
        series = self._finished.get((method, template, code))
        if series is None:
            template = endpoint_cap.label(template)
            series = self._finished.get((method, template, code))
            if series is None:
                series = self._series(method, template, code)
        series[0]()
        if trace is not None and len(trace[0]) + len(trace[1]) <= _EXEMPLAR_ID_ROOM:
            # The request's trace on the bucket it fell in (too long an ID would raise).
            series[1](elapsed, {"trace_id": trace[0], "span_id": trace[1]})
        else:
            series[1](elapsed)
        return template

    def _series(self, method: str, template: str, code: int) -> _Series:
        series = (
            self.requests_total.labels(method, template, str(code)).inc,
            self.duration.labels(method, template).observe,
        )
        self._finished[(method, template, code)] = series
        return series

    def count_error(self, error_type: str, template: str) -> None:
        child = self._errors.get((error_type, template))
        if child is None:
            key = (error_type, endpoint_cap.label(template))
            child = self._errors.get(key)
            if child is None:
                child = self._errors[key] = self.errors_total.labels(*key)
        child.inc()


_Matcher = tuple[Callable[[str], "re.Match[str] | None"], list[str]]


class _RoutePredictor:
    """Guess a request's route template before the router runs, from the app's routes.

    Built once per route table (see _routes.py): routes are grouped by their first path
    segment, and each group is one combined regex whose matching alternative names the
    template, so a request tries only the routes that can match it.
    Unknown apps and paths give UNMATCHED_ROUTE.
    """

    __slots__ = ("_by_segment", "_fallback", "_table")

    def __init__(self) -> None:
        self._table: object = None
        self._by_segment: dict[str, _Matcher] = {}
        self._fallback: _Matcher | None = None

    def predict(self, app: Any, path: str) -> str:
        table = table_of(app)
        if table is None:
            return UNMATCHED_ROUTE
        if table is not self._table:
            self._build(table.ordered)
            self._table = table
        parts = path.split("/", 2)
        matcher = self._by_segment.get(parts[1] if len(parts) > 1 else "", self._fallback)
        if matcher is None:
            return UNMATCHED_ROUTE
        found = matcher[0](path)
        if found is None or found.lastindex is None:
            return UNMATCHED_ROUTE
        return matcher[1][found.lastindex - 1]

    def _build(self, ordered: list[tuple[str, str]]) -> None:
        entries = [(regex, template, _first_segment(template)) for template, regex in ordered]
        # A route whose first segment is a parameter can match any path: it joins
        # every group, in its original order.
        self._by_segment = {
            segment: _matcher([e for e in entries if e[2] in (segment, None)])
            for segment in {e[2] for e in entries if e[2] is not None}
        }
        wildcard = [e for e in entries if e[2] is None]
        self._fallback = _matcher(wildcard) if wildcard else None


def _first_segment(template: str) -> str | None:
    parts = template.split("/", 2)
    first = parts[1] if len(parts) > 1 else ""
    return None if "{" in first else first


def _matcher(entries: list[tuple[str, str, str | None]]) -> _Matcher:
    regex = re.compile("|".join(f"({pattern})" for pattern, _, _ in entries))
    return regex.fullmatch, [template for _, template, _ in entries]


class MetricsEndpoint:
    """Serve the registry in the text format the scraper asks for, optionally protected.

    OpenMetrics when `Accept` asks for it (exemplars are only visible there), the
    classic text format otherwise; gzip when `Accept-Encoding` allows it. In
    multiprocess mode each scrape aggregates every worker's files into a fresh registry.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry = REGISTRY,
        multiprocess: bool = False,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
    ) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        self._basic: tuple[bytes, bytes] | None = None
        challenges: list[tuple[bytes, bytes]] = []
        if username is not None and password is not None:
            self._basic = (username.encode("utf-8"), password.encode("utf-8"))
            challenges.append((b"www-authenticate", b'Basic realm="metrics", charset="UTF-8"'))
        self._bearer = bearer_token.encode("utf-8") if bearer_token is not None else None
        if self._bearer is not None:
            challenges.append((b"www-authenticate", b'Bearer realm="metrics"'))
        self._protected = bool(challenges)
        self._challenges = challenges

    def render(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, str, bool]:
        """The exposition body, its content type, and whether it is gzip-compressed."""
        encoder, content_type = choose_encoder(accept)
        registry = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = encoder(registry)
        if _accepts_gzip(accept_encoding):
            # Level 6: close to level 9's size at a fraction of its CPU.
            return gzip.compress(body, compresslevel=6), content_type, True
        return body, content_type, False

    def authorised(self, authorization: bytes | None) -> bool:
        if not self._protected:
            return True
        if authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(b" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == b"basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, separator, password = decoded.partition(b":")
            # Both comparisons always run, in constant time, so timing reveals nothing.
            user_ok = hmac.compare_digest(user, self._basic[0])
            password_ok = hmac.compare_digest(password, self._basic[1])
            return bool(separator) and user_ok and password_ok
        if scheme == b"bearer" and self._bearer is not None:
            return hmac.compare_digest(credentials, self._bearer)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            await _respond(send, 405, b"Method Not Allowed", [(b"allow", b"GET, HEAD")])
            return
        if not self.authorised(header_value(scope, b"authorization")):
            await _respond(send, 401, b"Unauthorized", self._challenges)
            return
        accept = (header_value(scope, b"accept") or b"").decode("latin-1")
        accept_encoding = (header_value(scope, b"accept-encoding") or b"").decode("latin-1")
        # A large registry takes milliseconds to render: keep it off the event loop.
        body, content_type, gzipped = await run_in_threadpool(self.render, accept, accept_encoding)
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"vary", b"Accept, Accept-Encoding"),
            (b"cache-control", b"no-store"),
        ]
        if gzipped:
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().replace(" ", "").lower()
            return quality not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


async def _respond(
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
