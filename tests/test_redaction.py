"""The redaction policy: which keys are secret, how values look redacted, where it applies."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from amani_observability import (
    ConfigurationError,
    ObservabilitySettings,
    configure_logging,
    instrument,
)
from amani_observability._own_traffic import is_own_traffic, own_traffic
from amani_observability._redaction import (
    REDACTED,
    Redactor,
    mask_userinfo,
    url_origin,
)
from amani_observability.alerts import AlertDispatcher
from amani_observability.logs import ACCESS_LOGGER

policy = Redactor()


@pytest.mark.parametrize(
    "key",
    [
        "password", "PASSWORD", "passwd", "secret", "token", "access_token", "refresh_token",
        "api_key", "apikey", "key", "authorization", "auth", "cookie", "session", "sig",
        "signature", "credential", "private_key", "card_number", "cvv", "iban",
        # ... and names ending in `_` plus one of them, however spelled.
        "stripe_api_key", "X-Auth-Token", "x_auth_token", "Proxy-Authorization", "Set-Cookie",
        "X-Amz-Signature", "sessionToken", "client.secret", "csrf_token",
    ],
)  # fmt: skip
def test_secret_keys(key: str) -> None:
    assert policy.secret_key(key) is True


@pytest.mark.parametrize(
    "key", ["page", "keyboard", "monkey", "keys", "tokens_left", "author", "session_count", "id"]
)
def test_harmless_keys_stay_readable(key: str) -> None:
    assert policy.secret_key(key) is False


def test_redact_keys_extend_the_denylist_with_the_same_matching() -> None:
    extended = Redactor(["acct_no", "X-Tenant-Pin"])
    keys = ("acct_no", "acctNo", "bank_acct_no", "tenant_pin")
    assert [extended.secret_key(k) for k in keys] == [True, True, True, False]
    assert extended.secret_key("x_tenant_pin") is True
    assert policy.secret_key("acct_no") is False


def test_query_strings_keep_their_harmless_parameters_byte_for_byte() -> None:
    assert policy.query("page=2&token=abc&p%61ssword=x&q=a+b%20c&flag&Api-Key=k") == (
        "page=2&token=[redacted]&p%61ssword=[redacted]&q=a+b%20c&flag&Api-Key=[redacted]"
    )
    harmless = "page=2&sort=-created&keyboard=qwerty"
    assert policy.query(harmless) is harmless


def test_urls_lose_userinfo_and_secret_query_values() -> None:
    assert policy.url("https://user:pass@host:8443/a/b?api_key=k&b=2#top") == (
        "https://[redacted]@host:8443/a/b?api_key=[redacted]&b=2#top"
    )
    assert mask_userinfo("bad: http://u:p@a.example, https://b.example/x@y and ftp://v@c") == (
        "bad: http://[redacted]@a.example, https://b.example/x@y and ftp://[redacted]@c"
    )
    assert url_origin("https://hooks.slack.com/services/T0/B0/XYZ") == (
        "https://hooks.slack.com/[redacted]"
    )
    assert policy.urls_in("see http://u:p@h/x?token=t&a=1.") == (
        "see http://[redacted]@h/x?token=[redacted]&a=1."
    )


@dataclass
class Card:
    card_number: str
    holder: str


class Login(BaseModel):
    user: str
    password: str


def test_nested_data_lists_json_text_bytes_pairs_and_models() -> None:
    data = {
        "password": "p1",
        "account": {"api_key": "k1", "name": "ok"},
        "sessions": [{"token": "t1"}, ("cookie", "c1")],
        "json": '{"secret": "s1", "n": 1}',
        "raw": b'{"cvv": "123", "n": [1, 2]}',
        "form": b"user=ann&password=p2",
        "headers": [(b"authorization", b"Bearer t2"), (b"accept", b"*/*")],
        "card": Card("4111", "Ann"),
        "login": Login(user="ann", password="p3"),
        "count": 3,
    }
    assert policy.data(data) == {
        "password": REDACTED,
        "account": {"api_key": REDACTED, "name": "ok"},
        "sessions": [{"token": REDACTED}, ("cookie", REDACTED)],
        "json": '{"secret": "[redacted]", "n": 1}',
        "raw": b'{"cvv": "[redacted]", "n": [1, 2]}',
        "form": b"user=ann&password=[redacted]",
        "headers": [(b"authorization", REDACTED), (b"accept", b"*/*")],
        "card": {"card_number": REDACTED, "holder": "Ann"},
        "login": {"user": "ann", "password": REDACTED},
        "count": 3,
    }


def test_serialised_and_cut_short_text_is_still_redacted() -> None:
    """Sentry shows frame variables as repr() and cuts long ones short."""
    assert policy.text('b\'{"token": "t", "n": 1}\'') == 'b\'{"token": "[redacted]", "n": 1}\''
    assert policy.text("{'iban': 'DE00', 'n': 1}") == "{'iban': '[redacted]', 'n': 1}"
    cut = (
        'b\'{"password": "p", "account": {"api_key": "k"}, "sessions": [{"token": "t"}], "pad": "xx'
    )
    assert policy.text(cut) == (
        'b\'{"password": "[redacted]", "account": {"api_key": "[redacted]"}, '
        '"sessions": [{"token": "[redacted]"}], "pad": "xx'
    )


def test_text_beyond_256_kib_is_cut_there_and_still_redacted() -> None:
    head = '{"password": "p", "pad": "'
    text = json.dumps({"password": "p", "pad": "x" * 300_000, "token": "t"})
    pad = "x" * (256 * 1024 - len(head))
    assert policy.text(text) == '{"password": "[redacted]", "pad": "' + pad + "…[truncated]"


async def test_access_log_redacts_the_query_and_honours_redact_keys() -> None:
    stream = io.StringIO()

    async def items(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = instrument(
        Starlette(routes=[Route("/items", items)]),
        ObservabilitySettings(metrics_enabled=False, redact_keys=["acct_no"]),
    )
    configure_logging(ObservabilitySettings(), stream=stream)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/items?token=t1&acct_no=9&page=2")
        await client.get("/items")
    urls = [
        json.loads(line)["url"]
        for line in stream.getvalue().splitlines()
        if json.loads(line)["logger"] == ACCESS_LOGGER
    ]
    assert urls == ["/items?token=[redacted]&acct_no=[redacted]&page=2", "/items"]


def test_uvicorns_own_access_lines_get_the_same_query_rule() -> None:
    """With ACCESS_LOG_ENABLED=false a server may keep uvicorn's access log on."""
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(access_log_enabled=False), stream=stream)
    access = logging.getLogger("uvicorn.access")
    uvicorns = io.StringIO()
    handler = logging.StreamHandler(uvicorns)  # as uvicorn's own handler would
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)  # as uvicorn sets it (an earlier test may have raised it)
    try:
        access.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/items?token=t1&page=2", "1.1", 200
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert uvicorns.getvalue() == (
        '127.0.0.1:5000 - "GET /items?token=[redacted]&page=2 HTTP/1.1" 200\n'
    )


def test_json_log_lines_redact_secret_extras() -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(redact_keys=["acct_no"]), stream=stream)
    logging.getLogger("app").info(
        "login", extra={"api_key": "k1", "acct_no": "9", "user": "ann", "attempt": 2}
    )
    [entry] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {k: entry[k] for k in ("message", "api_key", "acct_no", "user", "attempt")} == {
        "message": "login",
        "api_key": REDACTED,
        "acct_no": REDACTED,
        "user": "ann",
        "attempt": 2,
    }


def test_settings_repr_and_errors_never_show_url_userinfo() -> None:
    settings = ObservabilitySettings(
        otlp_endpoint="https://otlpuser:otlppass@collector.example:4317",
        pagerduty_events_url="https://pduser:pdpass@events.example/v2/enqueue",
    )
    shown = repr(settings) + str(settings)
    assert "otlp_endpoint='https://[redacted]@collector.example:4317'" in shown
    assert "pagerduty_events_url='https://[redacted]@events.example/v2/enqueue'" in shown
    assert not any(s in shown for s in ("otlpuser", "otlppass", "pduser", "pdpass"))
    with pytest.raises(ConfigurationError) as raised:
        ObservabilitySettings(otlp_endpoint="ftp://user:pass@collector.example")
    assert str(raised.value) == (
        "invalid observability settings: OTLP_ENDPOINT=ftp://[redacted]@collector.example: "
        "must be an http:// or https:// URL"
    )


def test_redact_keys_come_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDACT_KEYS", " acct_no, ,pin ")
    assert ObservabilitySettings().redact_keys == ["acct_no", "pin"]


async def test_alert_contexts_are_redacted_for_every_channel() -> None:
    seen: list[Any] = []

    class Recorder:
        name = "recorder"

        def request(self, alert: Any) -> None:
            seen.append(alert.context)

    dispatcher = AlertDispatcher(
        ObservabilitySettings(redact_keys=["acct_no"]), channels=[Recorder()]
    )
    try:
        await dispatcher.send_alert(
            "charge failed",
            "error",
            context={"acct_no": "9", "card": {"cvv": "1"}, "amount": 10},
            channels=["recorder"],
        )
    finally:
        await dispatcher.aclose()
    assert seen == [{"acct_no": REDACTED, "card": {"cvv": REDACTED}, "amount": 10}]


def test_own_traffic_suppresses_opentelemetry_instrumentation() -> None:
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    assert (is_own_traffic(), is_instrumentation_enabled()) == (False, True)
    with own_traffic():
        assert (is_own_traffic(), is_instrumentation_enabled()) == (True, False)
    assert (is_own_traffic(), is_instrumentation_enabled()) == (False, True)
