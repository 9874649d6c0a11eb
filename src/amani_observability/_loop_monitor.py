"""Event-loop lag and stalls: a callback the loop runs every interval, and a thread that
watches whether it ran.

Every `LOOP_MONITOR_INTERVAL_SECONDS` the loop runs one callback, which records how late
it ran in `event_loop_lag_seconds` and schedules the next: a blocked loop (a synchronous
HTTP call, a CPU-bound loop, a sync database driver) runs it late by the time it was
blocked. Nothing runs per request.

The watchdog thread wakes a few times per `LOOP_STALL_SECONDS` and compares the clock with
the time the next callback was due. When the loop is that late, it counts one stall in
`event_loop_stalls_total` and logs what the loop's thread is doing at that moment (its
stack, from `sys._current_frames()`) and which request it is serving, found by walking
that stack to our middleware's frame. It only reads: it never calls into the loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from time import monotonic
from types import CodeType, FrameType
from typing import Any

from ._asgi import UNMATCHED_ROUTE
from ._pipeline import NO_ENTRY, Exchange, Pipeline
from ._routes import route_template

logger = logging.getLogger("amani_observability.loop")

STALL_WARNING = (
    "Event loop blocked for %.2f s so far (LOOP_STALL_SECONDS=%g), serving %s; "
    "every other request of this worker waits. The loop's thread is at:\n%s"
)
STALLS_NOT_LOGGED = " (%d earlier stalls were counted but not logged)"
NOT_STARTED = "Event-loop monitor not started: lifespan start-up ran outside the event loop"
# At most one stall is logged per this many seconds; every stall is counted.
STALL_LOG_INTERVAL = 10.0
# Frames of the blocked thread shown in the warning, innermost first.
STACK_LIMIT = 30


class LoopMonitor:
    """The lag callback and the stall watchdog of one event loop."""

    def __init__(
        self,
        interval: float,
        stall_seconds: float,
        *,
        observe_lag: Callable[[float], None],
        count_stall: Callable[[], None],
    ) -> None:
        self.interval = interval
        self.stall_seconds = stall_seconds
        self.observe_lag = observe_lag
        self.count_stall = count_stall
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        # When the next callback is due (time.monotonic()); 0 while stopped.
        self.due = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.stopping = threading.Event()
        self.watchdog: threading.Thread | None = None

    def start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.info(NOT_STARTED)
            return
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self._schedule()
        if self.stall_seconds > 0:
            self.stopping = threading.Event()
            self.watchdog = threading.Thread(
                target=_Watchdog(self, self.stopping).run,
                name="amani-observability-loop-watchdog",
                daemon=True,
            )
            self.watchdog.start()

    async def stop(self) -> None:
        self.due = 0.0
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.stopping.set()
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            # The event wakes it at once; joining keeps a stopped app from logging.
            await asyncio.to_thread(watchdog.join, 5.0)

    def _schedule(self) -> None:
        assert self.loop is not None
        self.due = monotonic() + self.interval
        self.handle = self.loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        # Timers may fire a clock tick early (uvloop keeps milliseconds): that is no lag.
        lag = monotonic() - self.due
        self.observe_lag(lag if lag > 0.0 else 0.0)
        self._schedule()


class _Watchdog:
    """The thread's side: reads the monitor's due time and the loop thread's stack."""

    def __init__(self, monitor: LoopMonitor, stopping: threading.Event) -> None:
        self.monitor = monitor
        self.stopping = stopping
        self.reported_due = 0.0
        self.last_logged = -STALL_LOG_INTERVAL
        self.not_logged = 0

    def run(self) -> None:
        monitor = self.monitor
        # Often enough to catch a stall soon after it passes the threshold.
        check_every = min(monitor.stall_seconds / 4, 0.25)
        while not self.stopping.wait(check_every):
            due = monitor.due
            loop = monitor.loop
            if not due or loop is None:
                continue
            if loop.is_closed():
                return
            late = monotonic() - due
            # A loop that is not running (between run_until_complete() calls) is not blocked.
            if late < monitor.stall_seconds or due == self.reported_due or not loop.is_running():
                continue
            self.reported_due = due  # once per stall: the next stall has a new due time
            try:
                monitor.count_stall()
                self._report(late)
            except Exception:  # the watchdog must outlive any one report
                logger.debug("could not report an event-loop stall", exc_info=True)

    def _report(self, late: float) -> None:
        now = monotonic()
        if now - self.last_logged < STALL_LOG_INTERVAL:
            self.not_logged += 1
            return
        self.last_logged = now
        frame = sys._current_frames().get(self.monitor.loop_thread)
        stack = "".join(traceback.format_stack(frame, STACK_LIMIT)) if frame else "(unknown)\n"
        request_id, route = _request_of(frame)
        serving = f"request {request_id} ({route})" if request_id or route else "no request"
        message = STALL_WARNING
        arguments: tuple[Any, ...] = (late, self.monitor.stall_seconds, serving, stack.rstrip())
        if self.not_logged:
            message += STALLS_NOT_LOGGED
            arguments += (self.not_logged,)
            self.not_logged = 0
        logger.warning(
            message,
            *arguments,
            extra={"request_id": request_id, "route": route, "stalled_seconds": round(late, 3)},
        )


def _request_codes() -> frozenset[CodeType]:
    """The code of the pipeline's __call__, whose frame holds the request's exchange."""
    return frozenset({Pipeline.__call__.__code__})


def _request_of(frame: FrameType | None) -> tuple[str | None, str | None]:
    """(request ID, "METHOD route") of the request whose coroutine this stack runs in.

    A coroutine's frame is on its thread's stack while it runs, so the middleware frame
    below the blocking call holds that request's scope: no per-request bookkeeping.
    """
    codes = _request_codes()
    while frame is not None:
        if frame.f_code in codes:
            local_names = frame.f_locals
            scope = local_names.get("scope")
            if not isinstance(scope, dict) or scope.get("type") not in ("http", "websocket"):
                return None, None
            state = scope.get("state")
            request_id = state.get("request_id") if isinstance(state, dict) else None
            exchange = local_names.get("exchange")  # the pipeline's, once it has one
            entry = (
                exchange.entry
                if isinstance(exchange, Exchange) and exchange.entry is not NO_ENTRY
                else (scope.get("app"), scope.get("root_path", ""), None, None)
            )
            template = route_template(scope, entry) or UNMATCHED_ROUTE
            return request_id, f"{scope.get('method', 'GET')} {template}"
        frame = frame.f_back
    return None, None
