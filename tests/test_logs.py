"""JSON logs: one object per line, request context, idempotent set-up, access log."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amani_observability import ObservabilitySettings, configure_logging, instrument
from amani_observability._correlation import set_trace_ids_getter
from amani_observability.logs import ACCESS_LOGGER


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_extras_and_utc_time() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    logging.getLogger("app.payments").info("paid %s", "in full", extra={"amount": 100})
    (entry,) = lines(stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "app.payments"
    assert entry["message"] == "paid in full"
    assert entry["amount"] == 100
    assert entry["timestamp"].endswith("+00:00")
    assert set(entry) == {"timestamp", "level", "logger", "message", "amount"}


def test_exc_info_is_a_string() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    try:
        raise ValueError("bad amount")
    except ValueError:
        logging.getLogger("app").exception("failed")
    (entry,) = lines(stream)
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert entry["exc_info"].endswith("ValueError: bad amount")


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(ObservabilitySettings(), stream=first)
    configure_logging(ObservabilitySettings(), stream=second)
    logging.getLogger("app").warning("once")
    assert first.getvalue() == ""
    assert [e["message"] for e in lines(second)] == ["once"]


def test_log_level_is_applied() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(log_level="WARNING"), stream=stream)
    logging.getLogger("app").info("hidden")
    logging.getLogger("app").warning("shown")
    assert [e["message"] for e in lines(stream)] == ["shown"]


def test_uvicorn_loggers_go_through_the_same_formatter() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info("duplicate access line")
    assert [(e["logger"], e["message"]) for e in lines(stream)] == [
        ("uvicorn.error", "Started server process")
    ]


def test_trace_ids_come_from_the_tracing_seam() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    set_trace_ids_getter(lambda: ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
    try:
        logging.getLogger("app").info("traced")
    finally:
        set_trace_ids_getter(None)
    (entry,) = lines(stream)
    assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry["span_id"] == "00f067aa0ba902b7"


async def test_request_lines_carry_the_request_id_and_one_access_line() -> None:
    stream = io.StringIO()

    async def pay(request: Request) -> PlainTextResponse:
        logging.getLogger("app").info("paying")
        return PlainTextResponse("ok", status_code=201)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = instrument(
        Starlette(routes=[Route("/pay", pay, methods=["POST"]), Route("/health", health)]),
        ObservabilitySettings(metrics_enabled=False),
    )
    configure_logging(ObservabilitySettings(), stream=stream)  # capture what instrument() set up
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/pay?x=1&y=2", headers={"X-Request-ID": "req-7"})
        await client.get("/health", headers={"X-Request-ID": "req-8"})
    app_line, access_line = [e for e in lines(stream) if e["logger"] != "httpx"]
    assert (app_line["message"], app_line["request_id"]) == ("paying", "req-7")
    assert access_line["logger"] == ACCESS_LOGGER
    assert access_line["message"] == "POST /pay?x=1&y=2 201"
    assert {
        k: access_line[k] for k in ("request_id", "method", "url", "status_code", "client")
    } == {
        "request_id": "req-7",
        "method": "POST",
        "url": "/pay?x=1&y=2",
        "status_code": 201,
        "client": "10.1.2.3:4321",
    }
    assert 0 < access_line["duration_ms"] < 5000


async def test_log_json_false_keeps_info_lines_as_plain_text_with_the_request_id() -> None:
    stream = io.StringIO()

    async def pay(request: Request) -> PlainTextResponse:
        logging.getLogger("app").info("paying")
        return PlainTextResponse("ok")

    settings = ObservabilitySettings(log_json=False, metrics_enabled=False)
    app = instrument(Starlette(routes=[Route("/pay", pay)]), settings)
    configure_logging(settings, stream=stream)  # what instrument() set up, into a buffer
    logging.getLogger("app").info("outside")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/pay", headers={"X-Request-ID": "req-7"})
    text = [
        line.split(" ", 2)[2]  # past the date and time
        for line in stream.getvalue().splitlines()
        if " httpx " not in line
    ]
    assert text == [
        "INFO app [-] outside",
        "INFO app [req-7] paying",
        f"INFO {ACCESS_LOGGER} [req-7] GET /pay 200",
    ]


def test_json_lines_escape_line_separators_and_control_characters() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream=stream)
    hostile = "a\u2028b\u2029c\x85d\x9be\x7ff\x00g\rh\ni\x1b[31m"
    logging.getLogger("app").warning(hostile, extra={"field": "\x85"})
    raw = stream.getvalue()
    assert raw.count("\n") == 1
    assert raw.isascii()  # every one of them escaped, nothing else was non-ASCII
    assert (
        '"message": "a\\u2028b\\u2029c\\u0085d\\u009be\\u007ff\\u0000g\\rh\\ni\\u001b[31m"' in raw
    )
    (entry,) = lines(stream)
    assert (entry["message"], entry["field"]) == (hostile, "\x85")


def test_access_log_disabled_leaves_uvicorns_access_logger_as_the_server_set_it() -> None:
    """uvicorn --no-access-log empties uvicorn.access and stops it propagating; with our
    access log off too, nothing turns it back on."""
    access = logging.getLogger("uvicorn.access")
    saved = (list(access.handlers), access.propagate, access.level)
    try:
        access.handlers = []
        access.propagate = False
        access.setLevel(logging.INFO)
        stream = io.StringIO()
        configure_logging(ObservabilitySettings(access_log_enabled=False), stream=stream)
        access.info('127.0.0.1:5 - "GET / HTTP/1.1" 200')
        assert (access.handlers, access.propagate, access.level) == ([], False, logging.INFO)
        assert stream.getvalue() == ""
    finally:
        access.handlers, access.propagate = saved[0], saved[1]
        access.setLevel(saved[2])


async def test_the_access_log_follows_a_moved_metrics_path() -> None:
    stream = io.StringIO()

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = instrument(
        Starlette(routes=[Route("/page", page)]),
        ObservabilitySettings(metrics_path="/internal/metrics"),
    )
    configure_logging(ObservabilitySettings(), stream=stream)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/internal/metrics")
        await client.get("/metrics")
        await client.get("/page")
    urls = [e["url"] for e in lines(stream) if e["logger"] == ACCESS_LOGGER]
    assert urls == ["/metrics", "/page"]
