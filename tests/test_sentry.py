"""Sentry: the real sentry-sdk transport against a local stand-in that records envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sentry_sdk
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sentry_sdk.consts import DEFAULT_MAX_VALUE_LENGTH
from sentry_sdk.scope import Scope

from amani_observability import ConfigurationError, ObservabilitySettings, _correlation, instrument
from amani_observability._correlation import current_trace_ids
from amani_observability._own_traffic import own_traffic
from amani_observability._redaction import redactor_for
from amani_observability._startup import SUMMARY_PREFIX
from amani_observability.sentry import (
    SentryMiddleware,
    add_breadcrumb,
    before_send_handler,
    capture_exception,
    http_status_of,
    init_sentry,
)
from amani_observability.sentry import _core as sentry_module
from amani_observability.sentry._sentry_seam import trace_bridge, unbridge_traces
from tests.conftest import free_port, lifespan
from tests.sentry_stand_in import SentryStandIn
from tests.support import call_asgi, http_scope


@pytest.fixture
def sentry_server() -> Iterator[SentryStandIn]:
    with SentryStandIn() as stand_in:
        yield stand_in


def _reset_sentry() -> None:
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=0)
    sentry_sdk.get_global_scope().set_client(None)
    for scope in (
        sentry_sdk.get_global_scope(),
        Scope.get_isolation_scope(),
        Scope.get_current_scope(),
    ):
        scope.clear()
    unbridge_traces(current_trace_ids)
    sentry_module._policy = sentry_module.DEFAULT_POLICY
    sentry_module._redactor = redactor_for(())


@pytest.fixture(autouse=True)
def fresh_sentry() -> Iterator[None]:
    """No client, no scope data and the default policy before and after every test."""
    _reset_sentry()
    yield
    _reset_sentry()
    _correlation.set_trace_ids_getter(None)


def settings_for(dsn: str | None, **values: Any) -> ObservabilitySettings:
    return ObservabilitySettings(sentry_dsn=dsn, log_json=False, metrics_enabled=False, **values)


def flush() -> None:
    sentry_sdk.flush(timeout=10)


# --- apps ------------------------------------------------------------------------------------


def make_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise RuntimeError("kaboom for item 0")
        if item_id == 404:
            raise HTTPException(status_code=404, detail="no such item")
        return {"item_id": item_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        raise RuntimeError("database down")

    @app.post("/payments")
    async def pay() -> dict[str, str]:
        add_breadcrumb("charging card", category="payment", data={"amount": 100})
        try:
            raise ValueError("card declined")
        except ValueError as exc:
            capture_exception(
                exc, context={"payment_id": "pay-1"}, user_info={"id": "u-1", "email": "a@b.c"}
            )
        raise LookupError("after the payment")

    return app


async def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around a client talking to it in-process."""
    async with lifespan(app), await client_for(app) as client:
        yield client


async def asgi_request(app: Any, path: str, *, method: str = "GET", headers: Any = ()) -> int:
    """Call the app as a server would; return the status, swallowing the re-raised error."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        messages.append(message)

    # The re-raised error is what a server would log; the 500 has been sent by then.
    with contextlib.suppress(Exception):
        await app(http_scope(path, method=method, headers=headers), receive, send)
    return int(next(m["status"] for m in messages if m["type"] == "http.response.start"))


# --- set-up ----------------------------------------------------------------------------------


def test_without_a_dsn_nothing_starts_and_one_info_line_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="amani_observability")
    assert init_sentry(settings_for(None)) is False
    assert [r.getMessage() for r in caplog.records] == [sentry_module.SENTRY_DISABLED]
    assert sentry_sdk.get_client().is_active() is False


async def test_instrument_without_a_dsn_adds_no_sentry_layer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="amani_observability")
    app = instrument(make_app(), settings_for(None))
    async with lifespan(app):
        pass
    messages = [r.getMessage() for r in caplog.records]
    # Besides the start-up summary (tests/test_startup.py), Sentry says it is off.
    assert [m for m in messages if not m.startswith(SUMMARY_PREFIX)] == [
        sentry_module.SENTRY_DISABLED
    ]
    assert sentry_sdk.get_client().is_active() is False


def test_a_malformed_dsn_is_a_configuration_error_that_hides_the_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings(sentry_dsn="https://secretkey-without-project@o1.ingest.sentry.io")
    assert str(caught.value) == (
        "invalid observability settings: SENTRY_DSN: must be a Sentry DSN such as "
        "https://<key>@o0.ingest.sentry.io/<project>"
    )


def test_a_malformed_dsn_from_the_environment_fails_at_instrument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTRY_DSN", "not-a-dsn")
    with pytest.raises(ConfigurationError, match="SENTRY_DSN: must be a Sentry DSN"):
        instrument(make_app())


def test_an_empty_dsn_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_DSN", "")
    assert ObservabilitySettings().sentry_dsn is None


def test_report_status_codes_accept_codes_and_ranges() -> None:
    settings = ObservabilitySettings(sentry_report_status_codes="422, 400-402")
    assert settings.sentry_report_status_codes == frozenset({400, 401, 402, 422})
    assert ObservabilitySettings().sentry_report_status_codes == frozenset()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("4xx", "must be comma-separated HTTP status codes or ranges, e.g. 422,429 or 400-499"),
        ("99", "must be HTTP status codes between 100 and 599, e.g. 422,429"),
        ("499-400", "must be HTTP status codes between 100 and 599, e.g. 422,429"),
    ],
)
def test_bad_report_status_codes_are_refused(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings(sentry_report_status_codes=value)
    assert str(caught.value) == (
        f"invalid observability settings: SENTRY_REPORT_STATUS_CODES={value}: {problem}"
    )


def test_init_passes_environment_release_rates_and_privacy(sentry_server: SentryStandIn) -> None:
    settings = settings_for(
        sentry_server.dsn,
        environment="staging",
        service_version="1.2.3",
        sentry_traces_sample_rate=0.25,
        sentry_profiles_sample_rate=0.5,
    )
    assert init_sentry(settings) is True
    options = sentry_sdk.get_client().options
    assert (options["dsn"], options["environment"], options["release"]) == (
        sentry_server.dsn,
        "staging",
        "1.2.3",
    )
    assert (options["traces_sample_rate"], options["profiles_sample_rate"]) == (0.25, 0.5)
    assert sentry_sdk.get_client().should_send_default_pii() is False


def test_the_sdks_starlette_and_fastapi_integrations_stay_off(
    sentry_server: SentryStandIn,
) -> None:
    init_sentry(settings_for(sentry_server.dsn))
    installed = set(sentry_sdk.get_client().integrations)
    assert "starlette" not in installed
    assert "fastapi" not in installed
    assert {"logging", "dedupe", "atexit"} <= installed


# --- per request -----------------------------------------------------------------------------


async def test_an_unhandled_exception_is_reported_once_with_request_id_and_route(
    sentry_server: SentryStandIn,
) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn, environment="test"))
    async with serve(app) as client:
        response = await client.get("/items/0?page=2", headers={"X-Request-ID": "req-boom-1"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "req-boom-1"
        flush()
    [event] = sentry_server.events()
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("RuntimeError", "kaboom for item 0")
    assert exception["mechanism"] == {"type": "asgi", "handled": False}
    assert event["tags"] == {"request_id": "req-boom-1", "endpoint": "/items/{item_id}"}
    assert event["transaction"] == "/items/{item_id}"
    assert event["environment"] == "test"
    assert event["request"]["method"] == "GET"
    assert event["request"]["url"] == "http://testserver/items/0"
    assert event["request"]["query_string"] == "page=2"
    assert sentry_server.paths == ["/api/1/envelope/"]


async def test_the_exception_is_reraised_unchanged(sentry_server: SentryStandIn) -> None:
    error = KeyError("original")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    init_sentry(settings_for(sentry_server.dsn))
    with pytest.raises(KeyError) as caught:
        await call_asgi(SentryMiddleware(app), http_scope("/x"))
    assert caught.value is error
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is False


async def test_receive_is_passed_on_untouched_so_the_body_is_never_read() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(receive)
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"payload", "more_body": False}

    async def send(message: Any) -> None:
        return None

    await SentryMiddleware(app)(http_scope("/upload", method="POST"), receive, send)
    assert seen == [receive, b"payload"]


async def test_lifespan_scopes_pass_through() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    await SentryMiddleware(app)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert calls == ["lifespan"]


async def test_secret_headers_and_query_values_are_removed(sentry_server: SentryStandIn) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    async with serve(app) as client:
        await client.get(
            "/items/0?token=abc123&page=2",
            headers={
                "Authorization": "Bearer abc123",
                "Cookie": "session=abc123",
                "X-Api-Key": "abc123",
                "X-Auth-Token": "abc123",
                "X-Client-Secret": "abc123",
                "X-Access-Key": "abc123",
                "X-Forwarded-For": "203.0.113.9",
                "X-Request-ID": "req-scrub",
                "Accept": "application/json",
            },
        )
        flush()
    [event] = sentry_server.events()
    headers = event["request"]["headers"]
    assert headers == {
        "host": "testserver",
        "accept": "application/json",
        "accept-encoding": headers["accept-encoding"],
        "connection": "keep-alive",
        "user-agent": headers["user-agent"],
        "x-request-id": "req-scrub",
        # Secret headers keep their names; X-Forwarded-For (an address) is left out.
        "authorization": "[redacted]",
        "cookie": "[redacted]",
        "x-api-key": "[redacted]",
        "x-auth-token": "[redacted]",
        "x-client-secret": "[redacted]",
        "x-access-key": "[redacted]",
        # Added by sentry-sdk's httpx integration (>= 2.2x) to the test client's own request.
        **{name: headers[name] for name in ("sentry-trace", "baggage") if name in headers},
    }
    assert event["request"]["query_string"] == "token=[redacted]&page=2"
    # Frame variables held the raw ASGI scope: its secret values are gone there too.
    leaks = [k for k in _paths(event) if "abc123" in k]
    assert leaks == []
    assert ".exception.values[0].stacktrace.frames[0].vars.scope.headers[4][1]=[redacted]" in (
        _paths(event)
    )


class Login(BaseModel):
    user: str
    password: str


async def test_secrets_in_long_bodies_models_and_mappings_reach_no_envelope(
    sentry_server: SentryStandIn,
) -> None:
    """Bytes too long for the SDK's value limit, a model's repr() and a Mapping that is no
    dict would all show their secrets; REDACT_KEYS adds a name of the service's own."""
    app = FastAPI(telemetry={"tracing": False})

    @app.post("/login")
    async def login(request: Request) -> dict[str, str]:
        # Secrets built at run time: the frames' source lines are sent too.
        secret = "-".join
        raw = json.dumps(
            {
                "password": secret(("pw", "in-raw")),
                "pad": "x" * 3000,
                "cvv": secret(("cvv", "in-raw")),
            }
        )
        body = raw.encode()
        login_form = Login(user="ann", password=secret(("pw", "in-model")))
        headers = request.headers
        ledger = {"acct_no": secret(("acct", "in-dict")), "owner": "harmless-owner"}
        raise RuntimeError(f"login failed for {login_form.user} {len(body)} {headers} {ledger}")

    app = instrument(app, settings_for(sentry_server.dsn, redact_keys=["acct_no"]))
    async with serve(app) as client:
        await client.post("/login", headers={"X-Auth-Token": "tok-in-header"}, content=b"{}")
        flush()
    sent = b"".join(envelope.serialize() for envelope in sentry_server.envelopes)
    secrets = ("pw-in-raw", "cvv-in-raw", "pw-in-model", "tok-in-header", "acct-in-dict")
    assert [s for s in secrets if s.encode() in sent] == []
    [event] = sentry_server.events()
    [frame] = [
        f
        for f in event["exception"]["values"][0]["stacktrace"]["frames"]
        if f["function"] == "login"
    ]
    assert frame["vars"]["login_form"] == "{'user': 'ann', 'password': '[redacted]'}"
    assert frame["vars"]["ledger"] == {"acct_no": "[redacted]", "owner": "'harmless-owner'"}
    assert frame["vars"]["body"].startswith('b\'{"password": "[redacted]", "pad": "xxx')
    if DEFAULT_MAX_VALUE_LENGTH is None:  # sentry-sdk >= 2.4x sends a value whole
        assert frame["vars"]["body"].endswith('"cvv": "[redacted]"}\'')
    else:  # older releases cut it at their limit, after the redaction
        assert frame["vars"]["body"].endswith("x...")


def test_the_librarys_own_sends_leave_no_breadcrumb(sentry_server: SentryStandIn) -> None:
    init_sentry(settings_for(sentry_server.dsn))
    with sentry_sdk.isolation_scope():
        with own_traffic():
            sentry_sdk.add_breadcrumb(
                message="POST https://hooks.example/T/B/X", category="httplib"
            )
        sentry_sdk.add_breadcrumb(message="the service's own step", category="app")
        sentry_sdk.capture_message("after the alert")
    flush()
    [event] = sentry_server.events()
    assert [c["message"] for c in event["breadcrumbs"]["values"]] == ["the service's own step"]


async def test_health_and_metrics_path_errors_are_dropped(sentry_server: SentryStandIn) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    async with serve(app) as client:
        assert (await client.get("/health")).status_code == 500
        assert (await client.get("/items/0")).status_code == 500
        flush()
    assert [e["request"]["url"] for e in sentry_server.events()] == ["http://testserver/items/0"]


async def test_handled_http_exceptions_produce_no_event(sentry_server: SentryStandIn) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    async with serve(app) as client:
        assert (await client.get("/items/404")).status_code == 404
        assert (await client.get("/items/not-a-number")).status_code == 422
        flush()
    assert sentry_server.events() == []


def _validation_error() -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", "q"), "msg": "missing", "type": "missing"}])


def test_4xx_http_exceptions_are_dropped_and_5xx_reported(sentry_server: SentryStandIn) -> None:
    init_sentry(settings_for(sentry_server.dsn))
    assert capture_exception(HTTPException(status_code=404)) is None
    assert capture_exception(HTTPException(status_code=403)) is None
    assert capture_exception(_validation_error()) is None
    event_id = capture_exception(HTTPException(status_code=503, detail="upstream down"))
    flush()
    [event] = sentry_server.events()
    assert event["event_id"] == event_id
    assert event["exception"]["values"][0]["type"] == "HTTPException"


def test_listed_status_codes_are_reported(sentry_server: SentryStandIn) -> None:
    init_sentry(settings_for(sentry_server.dsn, sentry_report_status_codes="422"))
    assert capture_exception(HTTPException(status_code=404)) is None
    event_id = capture_exception(_validation_error())
    flush()
    [event] = sentry_server.events()
    assert (event["event_id"], event["exception"]["values"][0]["type"]) == (
        event_id,
        "RequestValidationError",
    )


def test_http_status_of_reads_the_common_http_exceptions() -> None:
    class HTTPException(Exception):  # Werkzeug's shape: `code`
        code = 410

    def info(exc: BaseException) -> tuple[Any, BaseException, None]:
        return (type(exc), exc, None)

    assert http_status_of(info(HTTPException())) == 410
    assert http_status_of(info(_validation_error())) == 422
    assert http_status_of(info(RuntimeError())) is None
    assert http_status_of(None) is None


def test_before_send_handler_keeps_other_events_and_can_be_wrapped(
    sentry_server: SentryStandIn,
) -> None:
    seen: list[str] = []

    def service_filter(event: Any, hint: Any) -> Any:
        event = before_send_handler(event, hint)
        if event is not None:
            seen.append(event["exception"]["values"][0]["type"])
            event.setdefault("tags", {})["team"] = "payments"
        return event

    init_sentry(settings_for(sentry_server.dsn, sentry_before_send=service_filter))
    assert capture_exception(HTTPException(status_code=404)) is None
    capture_exception(ValueError("kept"))
    flush()
    [event] = sentry_server.events()
    assert (event["exception"]["values"][0]["value"], event["tags"]) == (
        "kept",
        {"team": "payments"},
    )
    assert seen == ["ValueError"]


async def test_capture_exception_context_and_user_belong_to_that_event_only(
    sentry_server: SentryStandIn,
) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    async with serve(app) as client:
        response = await client.post("/payments", headers={"X-Request-ID": "req-pay"})
        assert response.status_code == 500
        flush()
    handled, unhandled = sentry_server.events()
    assert handled["exception"]["values"][0]["value"] == "card declined"
    assert handled["contexts"]["details"] == {"payment_id": "pay-1"}
    assert handled["user"] == {"id": "u-1", "email": "a@b.c"}
    assert handled["tags"]["request_id"] == "req-pay"
    assert [c["message"] for c in handled["breadcrumbs"]["values"]] == ["charging card"]
    assert handled["breadcrumbs"]["values"][0]["data"] == {"amount": 100}
    assert unhandled["exception"]["values"][0]["value"] == "after the payment"
    assert "details" not in unhandled["contexts"]
    assert "user" not in unhandled
    assert unhandled["tags"]["request_id"] == "req-pay"


def test_capture_exception_without_sentry_returns_none() -> None:
    assert capture_exception(ValueError("nobody listens")) is None


async def test_200_concurrent_failing_requests_keep_their_own_user_and_request_id(
    sentry_server: SentryStandIn,
) -> None:
    settings = settings_for(sentry_server.dsn)
    # Started directly (no lifespan) so the queue can hold the burst of 200 events.
    init_sentry(settings, transport_queue_size=1000)
    app = FastAPI(telemetry={"tracing": False})
    total = 200
    arrived = 0
    everyone_in = asyncio.Event()

    @app.get("/users/{user_id}/fail")
    async def fail(user_id: str) -> None:
        nonlocal arrived
        sentry_sdk.set_user({"id": user_id})
        add_breadcrumb(f"started {user_id}", category="test")
        arrived += 1
        if arrived == total:
            everyone_in.set()
        # Every request is in flight, its scope populated, before any of them fails.
        await asyncio.wait_for(everyone_in.wait(), 20)
        raise RuntimeError(f"failure of {user_id}")

    instrument(app, settings)
    async with await client_for(app) as client:
        responses = await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.get(f"/users/u{i}/fail", headers={"X-Request-ID": f"req-u{i}"})
                    for i in range(total)
                )
            ),
            60,
        )
    assert [r.status_code for r in responses] == [500] * total
    assert [r.headers["x-request-id"] for r in responses] == [f"req-u{i}" for i in range(total)]
    flush()
    events = sentry_server.events()
    assert len(events) == total
    for event in events:
        user = event["user"]["id"]
        assert event["user"] == {"id": user}
        assert event["tags"]["request_id"] == f"req-{user}"
        assert event["exception"]["values"][0]["value"] == f"failure of {user}"
        assert [c["message"] for c in event["breadcrumbs"]["values"]] == [f"started {user}"]
    assert sorted(e["user"]["id"] for e in events) == sorted(f"u{i}" for i in range(total))


async def test_errors_of_one_request_share_a_trace_and_continue_an_incoming_one(
    sentry_server: SentryStandIn,
) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    incoming = "771a43a4192642f0b136d5159a501700-1234567890abcdef-1"
    async with lifespan(app):
        # Raw ASGI calls: an httpx client would get its own sentry-trace from the SDK.
        await asgi_request(app, "/payments", method="POST", headers=[("sentry-trace", incoming)])
        await asgi_request(app, "/payments", method="POST")
        flush()
    first, second, third, fourth = sentry_server.events()
    assert first["contexts"]["trace"]["trace_id"] == "771a43a4192642f0b136d5159a501700"
    assert first["contexts"]["trace"]["parent_span_id"] == "1234567890abcdef"
    assert second["contexts"]["trace"]["trace_id"] == "771a43a4192642f0b136d5159a501700"
    assert third["contexts"]["trace"]["trace_id"] == fourth["contexts"]["trace"]["trace_id"]
    assert third["contexts"]["trace"]["trace_id"] != first["contexts"]["trace"]["trace_id"]
    assert len(third["contexts"]["trace"]["trace_id"]) == 32


@pytest.mark.parametrize("policy", ["restart", "ignore"])
async def test_a_callers_sentry_trace_is_not_continued_unless_the_policy_continues(
    sentry_server: SentryStandIn, policy: str
) -> None:
    """TRACE_CONTEXT_POLICY covers Sentry's own headers: errors and transactions alike."""
    incoming = "771a43a4192642f0b136d5159a501700-1234567890abcdef-1"
    for transactions in (0.0, 1.0):
        app = instrument(
            make_app(),
            settings_for(
                sentry_server.dsn,
                trace_context_policy=policy,
                sentry_traces_sample_rate=transactions,
            ),
        )
        async with lifespan(app):
            headers = [("sentry-trace", incoming), ("baggage", "sentry-trace_id=771a43a4")]
            await asgi_request(app, "/payments", method="POST", headers=headers)
            flush()
    envelopes = [*sentry_server.events(), *sentry_server.transactions()]
    # Errors-only mode: two events; with transactions: two events and the transaction.
    assert len(envelopes) == 5
    for envelope in envelopes:
        trace_context = envelope["contexts"]["trace"]
        assert trace_context["trace_id"] != "771a43a4192642f0b136d5159a501700"
        assert trace_context.get("parent_span_id") != "1234567890abcdef"


async def test_requests_in_fresh_contexts_fork_prepared_scopes_and_keep_their_own_trace(
    sentry_server: SentryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn runs each request in a copy of the server's context, where Sentry's scope
    # variables were never set. Each request must still get scopes and a trace of its
    # own, without the SDK building two new Scopes per request to fork from.
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    created: list[object] = []
    original_init = Scope.__init__

    def counting_init(self: Scope, *args: Any, **kwargs: Any) -> None:
        if threading.get_ident() == loop_thread:  # not the stand-in's server threads
            created.append(self)
        original_init(self, *args, **kwargs)

    loop_thread = threading.get_ident()
    async with lifespan(app):
        loop = asyncio.get_running_loop()
        # Whatever is made once per process is made by the first request.
        await loop.create_task(asgi_request(app, "/items/1"), context=contextvars.Context())
        monkeypatch.setattr(Scope, "__init__", counting_init)
        for _ in range(3):
            await loop.create_task(
                asgi_request(app, "/payments", method="POST"), context=contextvars.Context()
            )
        monkeypatch.setattr(Scope, "__init__", original_init)
        flush()
    assert created == []
    events = sentry_server.events()
    assert len(events) == 6  # per request: the captured ValueError, the unhandled LookupError
    traces = [event["contexts"]["trace"]["trace_id"] for event in events]
    assert traces[0::2] == traces[1::2]  # the two events of one request share its trace
    assert len(set(traces)) == 3
    for event in events:
        assert [c["message"] for c in event["breadcrumbs"]["values"]] == ["charging card"]


async def test_requests_get_the_global_scope_but_not_the_servers_breadcrumbs(
    sentry_server: SentryStandIn,
) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    async with lifespan(app):
        sentry_sdk.get_global_scope().set_tag("region", "eu-west")  # for every event
        sentry_sdk.add_breadcrumb(message="server started")  # the server's own context
        await asgi_request(app, "/items/0")
        flush()
    (event,) = sentry_server.events()
    assert event["tags"]["region"] == "eu-west"
    assert event["breadcrumbs"]["values"] == []


def test_request_scopes_are_independent_copies_of_the_blank_scopes() -> None:
    blanks = sentry_module._blank()
    # The SDK's own copy, what Scope.fork() and copy.copy() run.
    assert sentry_module._copy_scope is Scope.__copy__
    for blank in blanks:
        first, second = sentry_module._copy_scope(blank), sentry_module._copy_scope(blank)
        assert (type(first), first._type) == (Scope, blank._type)
        first.set_tag("request", "a")
        first.add_breadcrumb({"message": "step"})
        first.add_event_processor(lambda event, hint: event)
        assert (blank._tags, second._tags) == ({}, {})
        assert (len(blank._breadcrumbs), len(second._breadcrumbs)) == (0, 0)
        assert (blank._event_processors, second._event_processors) == ([], [])


async def test_events_carry_the_opentelemetry_trace_when_tracing_is_on(
    sentry_server: SentryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: real tracing, and the Sentry event names the request's server span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app = instrument(
        make_app(),
        settings_for(sentry_server.dsn, tracing_enabled=True, tracing_exporter="none"),
        tracer_provider=provider,
    )
    async with serve(app) as client:
        await client.get("/items/0", headers={"X-Request-ID": "req-otel"})
        flush()
    [span] = memory.get_finished_spans()
    assert span.context is not None
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")
    [event] = sentry_server.events()
    assert event["tags"] == {
        "request_id": "req-otel",
        "endpoint": "/items/{item_id}",
        "trace_id": trace_id,
    }
    assert event["contexts"]["trace"]["trace_id"] == trace_id
    assert event["contexts"]["trace"]["span_id"] == span_id


async def test_errors_only_mode_sends_no_transactions(sentry_server: SentryStandIn) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn))
    async with serve(app) as client:
        assert (await client.get("/items/7")).status_code == 200
        flush()
    assert sentry_server.envelopes == []


async def test_sampled_requests_become_transactions_named_by_route_continuing_the_trace(
    sentry_server: SentryStandIn,
) -> None:
    app = instrument(make_app(), settings_for(sentry_server.dsn, sentry_traces_sample_rate=1.0))
    incoming = "771a43a4192642f0b136d5159a501700-1234567890abcdef-1"
    async with lifespan(app):
        headers = [("sentry-trace", incoming), ("X-Request-ID", "req-t")]
        assert await asgi_request(app, "/items/7", headers=headers) == 200
        assert await asgi_request(app, "/items/0") == 500
        assert await asgi_request(app, "/health") == 500
        assert await asgi_request(app, "/nowhere") == 404
        flush()
    transactions = sentry_server.transactions()
    assert [t["transaction"] for t in transactions] == [
        "/items/{item_id}",
        "/items/{item_id}",
        "<unmatched>",
    ]
    ok, failed, unmatched = transactions
    assert ok["transaction_info"] == {"source": "route"}
    assert ok["contexts"]["trace"]["trace_id"] == "771a43a4192642f0b136d5159a501700"
    assert ok["contexts"]["trace"]["parent_span_id"] == "1234567890abcdef"
    assert ok["contexts"]["trace"]["data"]["http.response.status_code"] == 200
    assert ok["tags"]["request_id"] == "req-t"
    assert failed["contexts"]["trace"]["status"] == "internal_error"
    assert unmatched["contexts"]["trace"]["data"]["http.response.status_code"] == 404
    [error] = sentry_server.events()
    assert error["contexts"]["trace"]["trace_id"] == failed["contexts"]["trace"]["trace_id"]


# --- delivery and failure isolation ----------------------------------------------------------


async def test_shutdown_flushes_queued_events() -> None:
    with SentryStandIn(delay=0.5) as slow:
        app = instrument(make_app(), settings_for(slow.dsn))
        async with lifespan(app), await client_for(app) as client:
            await client.get("/items/0")
        # No explicit flush: the lifespan shutdown waited for the delivery.
        assert len(slow.events()) == 1
        assert sentry_sdk.get_client().transport is None  # closed


@pytest.mark.parametrize("target", ["closed port", "black hole"])
async def test_an_unreachable_or_silent_sentry_never_slows_or_breaks_requests(target: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as black_hole:
        if target == "black hole":
            # Accepts connections (the kernel's backlog does) and never answers.
            black_hole.bind(("127.0.0.1", 0))
            black_hole.listen(64)
            port = black_hole.getsockname()[1]
        else:
            port = free_port()
        app = instrument(make_app(), settings_for(f"http://key@127.0.0.1:{port}/1"))
        stuck: list[socket.socket] = []
        async with lifespan(app), await client_for(app) as client:
            durations = []
            for i in range(20):
                started = time.perf_counter()
                response = await client.get(f"/items/{i % 2}")
                durations.append(time.perf_counter() - started)
                assert response.status_code == (500 if i % 2 == 0 else 200)
            if target == "black hole":
                # The SDK did try to deliver, and is stuck waiting for an answer...
                black_hole.settimeout(10)
                connection, _ = black_hole.accept()
                stuck.append(connection)  # kept open and silent through the shutdown
            started_shutdown = time.perf_counter()
        shutdown = time.perf_counter() - started_shutdown
        for connection in stuck:
            connection.close()
    # ... yet no request waited for it (the SDK's socket timeout is 30 s): delivery runs
    # on the SDK's worker thread. The bound is loose for a busy CI machine.
    assert max(durations) < 3.0
    # The flush at shutdown is bounded by FLUSH_TIMEOUT (2 s), whatever Sentry does.
    assert shutdown < sentry_module.FLUSH_TIMEOUT + 1.5


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every leaf of a JSON document as "path=value", to find where a secret went."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, f"{prefix}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, f"{prefix}[{i}]")]
    return [f"{prefix}={value}"]


def test_the_opentelemetry_bridge_is_removed_when_tracing_is_turned_off(
    sentry_server: SentryStandIn,
) -> None:
    init_sentry(settings_for(sentry_server.dsn, tracing_enabled=True, tracing_exporter="none"))
    assert trace_bridge() is current_trace_ids
    init_sentry(settings_for(sentry_server.dsn))
    assert trace_bridge() is None


async def test_access_log_lines_do_not_become_breadcrumbs(sentry_server: SentryStandIn) -> None:
    settings = ObservabilitySettings(
        sentry_dsn=sentry_server.dsn, log_json=True, metrics_enabled=False
    )
    app = instrument(make_app(), settings)
    async with lifespan(app):
        assert await asgi_request(app, "/items/7") == 200
        capture_exception(ValueError("outside any request"))
        flush()
    [event] = sentry_server.events()
    crumbs = event.get("breadcrumbs", {}).get("values", [])
    assert [c for c in crumbs if c.get("category") == "amani_observability.access"] == []


def test_init_sentry_alone_reads_the_environment(
    sentry_server: SentryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTRY_DSN", sentry_server.dsn)
    monkeypatch.setenv("ENVIRONMENT", "worker")
    assert init_sentry() is True
    capture_exception(ValueError("from a script"))
    flush()
    [event] = sentry_server.events()
    assert (event["environment"], event["exception"]["values"][0]["value"]) == (
        "worker",
        "from a script",
    )


async def test_a_failing_websocket_is_reported_with_its_url(sentry_server: SentryStandIn) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ConnectionAbortedError("socket gone")

    init_sentry(settings_for(sentry_server.dsn))
    scope = http_scope("/ws/chat", type="websocket", scheme="ws", headers=[("host", "chat")])
    del scope["method"]
    with pytest.raises(ConnectionAbortedError):
        await SentryMiddleware(app)(scope, None, None)  # type: ignore[arg-type]
    flush()
    [event] = sentry_server.events()
    assert (event["request"]["method"], event["request"]["url"]) == (
        "WEBSOCKET",
        "ws://chat/ws/chat",
    )
    assert event["transaction"] == "<unmatched>"


async def test_excluded_paths_are_configurable(sentry_server: SentryStandIn) -> None:
    settings = settings_for(sentry_server.dsn, sentry_excluded_paths="/internal/.*")
    init_sentry(settings)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError(scope["path"])

    middleware = SentryMiddleware(app)
    for path in ("/internal/jobs", "/metrics", "/health", "/public"):
        with pytest.raises(RuntimeError):
            await middleware(http_scope(path), None, None)  # type: ignore[arg-type]
    flush()
    # /health is no longer excluded once the list is replaced; METRICS_PATH always is.
    assert [e["exception"]["values"][0]["value"] for e in sentry_server.events()] == [
        "/health",
        "/public",
    ]


# --- query breadcrumbs -------------------------------------------------------------------

# sentry-sdk sets an integration up at most once per process, and once set up it stays on
# whatever later init() calls say: each case runs in a fresh interpreter.
QUERY_THEN_ERROR = """
import json, sys
import sentry_sdk
from prometheus_client import REGISTRY
from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration
from sqlalchemy import create_engine, text
from amani_observability import ObservabilitySettings
from amani_observability.metrics import instrument_sqlalchemy
from amani_observability.sentry import init_sentry

# Made and measured before Sentry starts: the breadcrumbs cover engines of any age, and
# the query metrics go on being recorded beside them.
engine = instrument_sqlalchemy(create_engine("sqlite://"))
for rate, options in json.loads(sys.argv[2]):
    if options.pop("disable_sqlalchemy", False):
        options["disabled_integrations"] = [SqlalchemyIntegration]
    settings = ObservabilitySettings(sentry_dsn=sys.argv[1], sentry_traces_sample_rate=rate)
    init_sentry(settings, **options)
with sentry_sdk.isolation_scope(), engine.connect() as conn:
    conn.execute(text("SELECT 1 + :n"), {"n": 41}).scalar_one()
    conn.exec_driver_sql("CREATE TABLE t (a INTEGER)")  # no parameters
    conn.execute(text("INSERT INTO t VALUES (:a)"), [{"a": 1}, {"a": 2}])  # executemany
    sentry_sdk.capture_exception(RuntimeError("after a query"))
sentry_sdk.flush(timeout=10)
queries = {
    operation: REGISTRY.get_sample_value(
        "db_query_duration_seconds_count", {"operation": operation}
    )
    for operation in ("SELECT", "OTHER", "INSERT")
}
integration_on = sentry_sdk.get_client().get_integration(SqlalchemyIntegration) is not None
print(json.dumps([integration_on, queries]))
"""
QUERY_BREADCRUMBS = [
    ("query", "SELECT 1 + ?", False),
    ("query", "CREATE TABLE t (a INTEGER)", False),
    ("query", "INSERT INTO t VALUES (?)", True),
]


@pytest.mark.parametrize(
    ("inits", "sdks_integration_on", "breadcrumbs"),
    [
        # Errors-only: the SDK's integration (a span per query) is off, ours records.
        ([(0.0, {})], False, QUERY_BREADCRUMBS),
        # Performance on, or query parameters asked for: the SDK's records, ours is quiet.
        ([(1.0, {})], True, QUERY_BREADCRUMBS),
        ([(0.0, {"_experiments": {"record_sql_params": True}})], True, QUERY_BREADCRUMBS),
        # Performance turned on after an errors-only init: the SDK cannot set its
        # integration up any more, so ours goes on recording.
        ([(0.0, {}), (1.0, {})], False, QUERY_BREADCRUMBS),
        # The service disabled the SDK's integration: no query breadcrumbs at all.
        ([(0.0, {"disable_sqlalchemy": True})], False, []),
    ],
    ids=["errors-only", "performance", "parameters", "re-init", "disabled by the service"],
)
def test_each_query_is_one_breadcrumb_and_a_span_only_where_performance_is_on(
    sentry_server: SentryStandIn,
    inits: list[tuple[float, dict[str, Any]]],
    sdks_integration_on: bool,
    breadcrumbs: list[tuple[str, str, bool]],
) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", QUERY_THEN_ERROR, sentry_server.dsn, json.dumps(inits)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    integration_on, queries = json.loads(completed.stdout)
    assert integration_on is sdks_integration_on
    assert queries == {"SELECT": 1.0, "OTHER": 1.0, "INSERT": 1.0}
    (event,) = sentry_server.events()
    crumbs = [
        (crumb["category"], crumb["message"], crumb["data"].get("db.executemany", False))
        for crumb in event["breadcrumbs"]["values"]
        if crumb.get("category") == "query"
    ]
    assert crumbs == breadcrumbs


# --- threads -----------------------------------------------------------------------------

# As above, in a fresh interpreter each: sentry-sdk sets its threading integration up once.
THREADS_THEN_ERROR = """
import asyncio, json, sys, threading
from concurrent.futures import ThreadPoolExecutor
import sentry_sdk
from sentry_sdk.integrations.threading import ThreadingIntegration
from sentry_sdk.scope import Scope
from amani_observability import ObservabilitySettings
from amani_observability.sentry import init_sentry

options = {"integrations": [ThreadingIntegration()]} if sys.argv[2] == "own" else {}
init_sentry(ObservabilitySettings(sentry_dsn=sys.argv[1]), **options)
forks = 0
fork = Scope.fork
def counting_fork(self):
    global forks
    forks += 1
    return fork(self)
Scope.fork = counting_fork

def in_thread(request_scope):
    sentry_sdk.add_breadcrumb(message=threading.current_thread().name)
    scope = sentry_sdk.get_isolation_scope()
    return scope is request_scope, scope._tags.get("request")

async def main():
    global forks
    await asyncio.to_thread(int)  # starts the loop's executor thread: the SDK forks there
    with sentry_sdk.isolation_scope() as request_scope, ThreadPoolExecutor(1) as plain:
        sentry_sdk.set_tag("request", "r1")
        plain.submit(int).result()
        forks = 0
        to_thread = await asyncio.to_thread(in_thread, request_scope)
        to_thread_forks = forks
        submitted = plain.submit(in_thread, request_scope).result()
        sentry_sdk.capture_exception(RuntimeError("after the threads"))
    return {
        "integration": type(sentry_sdk.get_client().get_integration("threading")).__module__,
        "to_thread": [*to_thread, to_thread_forks],
        "submit": list(submitted),
        "sdk_forks_at_submit": hasattr(ThreadPoolExecutor.submit, "__wrapped__"),
    }

print(json.dumps(asyncio.run(main())))
sentry_sdk.flush(timeout=10)
"""


@pytest.mark.parametrize(
    ("integrations", "module", "to_thread_forks"),
    [
        # Ours: asyncio.to_thread runs in its copied context, with the request's own
        # scopes, and the scope copies the SDK would make (unseen by the function) are gone.
        ("default", "amani_observability.sentry._threads", 0),
        # A ThreadingIntegration of the service's own is used as given: two forks at
        # submit() and one more as the worker thread enters them.
        ("own", "sentry_sdk.integrations.threading", 3),
    ],
)
def test_to_thread_runs_with_the_request_scopes_and_submit_with_forks_of_them(
    sentry_server: SentryStandIn,
    integrations: str,
    module: str,
    to_thread_forks: int,
) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", THREADS_THEN_ERROR, sentry_server.dsn, integrations],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    result = json.loads(completed.stdout)
    if not result["sdk_forks_at_submit"]:
        # sentry-sdk < 2.4x forks nothing at submit; its thread start shares the scopes.
        to_thread_forks = 0
    assert result == {
        "integration": module,
        # The function sees the request's isolation scope itself, either way.
        "to_thread": [True, "r1", to_thread_forks],
        # A plain submit carries no context: the SDK's forks of the request's scopes.
        "submit": [not result["sdk_forks_at_submit"], "r1"],
        "sdk_forks_at_submit": result["sdk_forks_at_submit"],
    }
    (event,) = sentry_server.events()
    crumbs = [crumb["message"] for crumb in event["breadcrumbs"]["values"]]
    # The to_thread breadcrumb is in the request's scope; the submitted one in a fork
    # (or, where the SDK forks nothing, in the request's scope too).
    assert crumbs == (
        ["asyncio_0"] if result["sdk_forks_at_submit"] else ["asyncio_0", "ThreadPoolExecutor-0_0"]
    )
    assert event["tags"]["request"] == "r1"
