"""Export failure isolation: the guard never raises and reports once per interval."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from amani_observability.tracing._export import ExportGuard


class _FailingExporter(SpanExporter):
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes

    def export(self, spans: Any) -> SpanExportResult:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]


def test_the_export_guard_reports_failures_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    failing = _FailingExporter(
        [
            ConnectionError("refused"),
            SpanExportResult.FAILURE,
            SpanExportResult.FAILURE,
            SpanExportResult.FAILURE,
            SpanExportResult.SUCCESS,
        ]
    )
    guard = ExportGuard(failing, "http://collector:4317", interval=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="amani_observability.tracing")
    assert guard.export([None] * 3) is SpanExportResult.FAILURE  # type: ignore[list-item]
    now[0] += 10
    assert guard.export([None] * 4) is SpanExportResult.FAILURE  # type: ignore[list-item]
    now[0] += 10
    assert guard.export([None] * 5) is SpanExportResult.FAILURE  # type: ignore[list-item]
    now[0] += 60
    assert guard.export([None] * 1) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert guard.export([None] * 1) is SpanExportResult.SUCCESS  # type: ignore[list-item]
    assert caplog.messages == [
        "Span export to http://collector:4317 is failing (ConnectionError: refused): "
        "3 spans dropped; next report in 60 s",
        "Span export to http://collector:4317 is failing (the exporter failed): "
        "10 spans dropped; next report in 60 s",
        "Span export to http://collector:4317 works again",
    ]


def test_an_abandoned_guard_drops_batches_without_calling_the_exporter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = _FailingExporter([])  # any call would fail on the empty list
    guard = ExportGuard(failing, "http://collector:4317")
    caplog.set_level(logging.WARNING, logger="amani_observability.tracing")
    guard.abandon()
    assert guard.export([None] * 2) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert caplog.messages == [
        "Span export to http://collector:4317 is failing (tracing shut down before the "
        "collector answered): 2 spans dropped; next report in 60 s"
    ]
