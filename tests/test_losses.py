"""amani_observability_dropped_total: every pipeline counts what it had to drop."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Sequence

import pytest
import sentry_sdk
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amani_observability import ObservabilitySettings, configure_logging, instrument
from amani_observability._losses import KNOWN_LOSSES, dropped_counter
from amani_observability.sentry import init_sentry
from amani_observability.tracing._export import CountingBatchSpanProcessor, ExportGuard
from tests.conftest import free_port, lifespan
from tests.support import call_asgi, http_scope


def dropped(pipeline: str, reason: str) -> float | None:
    return REGISTRY.get_sample_value(
        "amani_observability_dropped_total", {"pipeline": pipeline, "reason": reason}
    )


@pytest.fixture(autouse=True)
def no_losses_yet() -> Iterator[None]:
    dropped_counter().clear()
    yield
    dropped_counter().clear()


class HeldExporter(SpanExporter):
    """Holds its first export until released, so the batch queue fills meanwhile."""

    def __init__(self) -> None:
        self.exporting = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exporting.set()
        assert self.release.wait(30)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


@pytest.mark.parametrize("path", ["sdk_spans", "server_spans"])
async def test_spans_a_full_batch_queue_drops_are_counted(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue of 4, batches of 2: while the first batch is held, 4 spans wait and every
    further span pushes one out. Ended minus exported is exactly what is counted, for
    spans through the SDK and for the server spans of the fast path."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    exporter = HeldExporter()
    processor = CountingBatchSpanProcessor(ExportGuard(exporter, "the test"), 4)
    provider = TracerProvider()
    provider.add_span_processor(processor)

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = instrument(
        Starlette(routes=[Route("/page", page)]),
        ObservabilitySettings(tracing_enabled=True, metrics_enabled=False),
        tracer_provider=provider,
    )
    tracer = provider.get_tracer("test")
    async with lifespan(app):

        async def end_one() -> None:
            if path == "sdk_spans":
                tracer.start_span("work").end()
            else:
                await call_asgi(app, http_scope("/page"))

        for _ in range(2):
            await end_one()
        assert exporter.exporting.wait(10)  # the first two are out, held in export()
        for _ in range(4 + 3):
            await end_one()
        assert dropped("spans", "queue_full") == 3
        exporter.release.set()
        provider.force_flush()
    assert exporter.exported == 2 + 4
    assert dropped("spans", "queue_full") == 9 - exporter.exported


def test_spans_a_failed_export_is_counted() -> None:
    class Refusing(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.FAILURE

    guard = ExportGuard(Refusing(), "the test")
    provider = TracerProvider()
    spans = []
    for _ in range(3):
        span = provider.get_tracer("test").start_span("lost")
        span.end()
        spans.append(span)
    assert guard.export(spans) is SpanExportResult.FAILURE
    assert dropped("spans", "export_failed") == 3


def test_sentry_events_the_transport_could_not_send_are_counted() -> None:
    """A Sentry that does not listen: the real transport fails each envelope, and each
    event it loses is counted with sentry-sdk's own reason."""
    dsn = f"http://public@127.0.0.1:{free_port()}/1"
    try:
        init_sentry(ObservabilitySettings(sentry_dsn=dsn, log_json=False))
        for number in range(2):
            sentry_sdk.capture_message(f"lost {number}")
        sentry_sdk.flush(timeout=10)
    finally:
        sentry_sdk.get_global_scope().set_client(None)
    assert dropped("sentry_events", "network_error") == 2
    assert dropped("sentry_events", "queue_overflow") is None


def test_log_lines_the_stream_refuses_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("no space left on device")

    monkeypatch.setattr(logging, "raiseExceptions", False)  # no traceback on stderr
    configure_logging(ObservabilitySettings(), stream=Broken())
    logging.getLogger("app").warning("one")
    logging.getLogger("app").warning("two")
    assert dropped("log_lines", "write_error") == 2


def test_instrument_declares_every_known_loss_at_zero() -> None:
    instrument(Starlette(), ObservabilitySettings(log_json=False))
    assert {pair: dropped(*pair) for pair in KNOWN_LOSSES} == dict.fromkeys(KNOWN_LOSSES, 0.0)
