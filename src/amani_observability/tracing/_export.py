"""Failure isolation for span export: nothing raised, little logged, bounded shutdown.

`ExportGuard` wraps the real exporter. Whatever the collector does (refuses, times out,
answers errors), nothing reaches the application, which only ever appends finished spans
to the batch processor's queue; failed batches are counted and reported in one warning
per interval instead of the exporters' own line per batch and per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import TracerProvider

from .._losses import count_dropped
from .._redaction import mask_userinfo

# The tracing logger: users configure one logger for everything tracing reports.
logger = logging.getLogger("amani_observability.tracing")

# At most one export-failure warning per this many seconds, however many spans fail.
EXPORT_FAILURE_LOG_INTERVAL = 60.0
# Seconds the shutdown hook waits for the last spans to be exported, and then for the
# exporter to give up; together below _instrument.SHUTDOWN_TIMEOUT.
SHUTDOWN_FLUSH_WAIT = 3.0
SHUTDOWN_ABANDON_WAIT = 1.0
SHUTDOWN_GAVE_UP = "tracing shutdown gave up waiting for the exporter"

EXPORT_FAILED = "Span export to %s is failing (%s): %d spans dropped; next report in %.0f s"
EXPORT_RECOVERED = "Span export to %s works again"

# Loggers the OTLP exporters report each failed batch and retry on; while our guard is
# exporting, their records are folded into our once-per-interval warning.
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
)


async def shut_down(provider: TracerProvider, guard: ExportGuard | None) -> None:
    """Flush and shut the provider down, waiting a bounded time whatever the collector does."""
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is None:
        return
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def run() -> None:
        try:
            shutdown()
        except Exception:
            logger.exception("the tracer provider failed to shut down")
        finally:
            # RuntimeError: the loop closed while we waited, so nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, finished)

    # A daemon thread, not the default executor: a wedged exporter must not hold up exit.
    threading.Thread(target=run, name="amani-tracing-shutdown", daemon=True).start()
    deadline = loop.time() + SHUTDOWN_FLUSH_WAIT
    while not finished.done() and loop.time() < deadline:
        if guard is not None and (guard.failing or guard.struggling):
            break  # the collector is down: waiting would only hold the shutdown up
        await asyncio.wait([finished], timeout=0.05)
    if finished.done():
        return
    if guard is not None:
        guard.abandon()  # stops the exporter's retries; the remaining spans are dropped
    try:
        await asyncio.wait_for(asyncio.shield(finished), SHUTDOWN_ABANDON_WAIT)
    except asyncio.TimeoutError:
        logger.warning(SHUTDOWN_GAVE_UP)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- failure isolation --------------------------------------------------------------------


class _ExportState(threading.local):
    guard: ExportGuard | None = None  # the guard exporting on this thread, if any
    reason: str | None = None
    reason_level = 0


_export_state = _ExportState()


class _ExporterLogFilter(logging.Filter):
    """Swallow the OTLP exporters' own per-batch warnings while our guard exports.

    Thread-local, so only records produced inside our exporter's export() are touched;
    their text becomes the reason in our rate-limited warning.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        guard = _export_state.guard
        if guard is not None and record.levelno >= logging.WARNING:
            # The exporter is complaining mid-export (typically: retrying against a
            # collector that refuses): shutdown need not wait for it.
            guard.struggling = True
            # Keep the first of the most severe messages: the first retry note names the
            # gRPC status and cause; "aborting retry" at shutdown says nothing.
            if record.levelno > _export_state.reason_level:
                _export_state.reason = record.getMessage()
                _export_state.reason_level = record.levelno
            return False
        return True


_exporter_log_filter = _ExporterLogFilter()
_quiet_users = 0


def quiet_exporter_logs(on: bool) -> None:
    global _quiet_users
    _quiet_users += 1 if on else -1
    for name in _EXPORTER_LOGGERS:
        exporter_logger = logging.getLogger(name)
        if _quiet_users > 0:
            if _exporter_log_filter not in exporter_logger.filters:
                exporter_logger.addFilter(_exporter_log_filter)
        else:
            exporter_logger.removeFilter(_exporter_log_filter)


# The batch processor's queue size when OTEL_BSP_MAX_QUEUE_SIZE does not say (the SDK's).
DEFAULT_MAX_QUEUE_SIZE = 2048


def max_queue_size() -> int:
    """OTEL_BSP_MAX_QUEUE_SIZE as the SDK reads it (a bad value means the default)."""
    try:
        size = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE))
    except ValueError:
        return DEFAULT_MAX_QUEUE_SIZE
    return size if size > 0 else DEFAULT_MAX_QUEUE_SIZE


class QueueWatch:
    """Counts spans into the batch processor's queue and out of it (to the exporter).

    The SDK's queue is a bounded deque: a span entering a full queue pushes the oldest one
    out, unexported, and the SDK only logs it. Spans in minus spans out is the queue's
    length, so a span arriving when that reaches the queue's size is one span lost.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entered = 0  # written by the threads that end spans
        self.left = 0  # written by the export thread
        self.dropped = 0

    def entering(self) -> None:
        if self.entered - self.left - self.dropped >= self.size:
            self.dropped += 1
            count_dropped("spans", "queue_full")
        self.entered += 1

    def leaving(self, count: int) -> None:
        self.left += count


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor, counting the spans its full queue drops
    (`amani_observability_dropped_total{pipeline="spans", reason="queue_full"}`)."""

    def __init__(self, guard: ExportGuard, size: int) -> None:
        super().__init__(guard, max_queue_size=size)
        self.watch = QueueWatch(size)
        guard.watch = self.watch

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self.watch.entering()
        super().on_end(span)


class ExportGuard(SpanExporter):
    """Wraps the real exporter: nothing it raises escapes, and failures are logged at most
    once per interval however many spans or batches fail."""

    def __init__(
        self,
        exporter: SpanExporter,
        target: str,
        *,
        interval: float = EXPORT_FAILURE_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exporter = exporter
        self.target = target
        self.interval = interval
        self.clock = clock
        self.dropped = 0
        self.failing = False  # the last export failed
        self.struggling = False  # the export under way has hit errors and is retrying
        self.last_report: float | None = None
        self.abandoned = False
        self.closed = False
        self._lock = threading.Lock()
        self.watch: QueueWatch | None = None  # set by the processor that exports through us

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.watch is not None:
            self.watch.leaving(len(spans))
        if self.abandoned:
            self._failed(len(spans), "tracing shut down before the collector answered")
            return SpanExportResult.FAILURE
        _export_state.guard, _export_state.reason = self, None
        _export_state.reason_level = 0
        reason: str | None = None
        try:
            result = self.exporter.export(spans)
        except Exception as exc:
            result, reason = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        finally:
            _export_state.guard = None
            self.struggling = False
        if result is SpanExportResult.SUCCESS:
            if self.failing:
                self.failing = False
                logger.info(EXPORT_RECOVERED, self.target)
        else:
            self._failed(len(spans), reason or _export_state.reason or "the exporter failed")
        return result

    def _failed(self, count: int, reason: str) -> None:
        count_dropped("spans", "export_failed", count)
        with self._lock:
            self.failing = True
            self.dropped += count
            now = self.clock()
            if self.last_report is not None and now - self.last_report < self.interval:
                return
            dropped, self.dropped, self.last_report = self.dropped, 0, now
        # Exporter and exception texts may quote an endpoint with its userinfo.
        logger.warning(EXPORT_FAILED, self.target, mask_userinfo(reason), dropped, self.interval)

    def abandon(self) -> None:
        self.abandoned = True
        # Off the caller's thread: the OTLP exporters before 1.3x wait in shutdown() for
        # the export in progress, retries included, and the caller is the event loop.
        threading.Thread(target=self.shutdown, name="amani-tracing-abandon", daemon=True).start()

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.exporter.shutdown()
        except Exception:
            logger.debug("the span exporter failed to shut down", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
