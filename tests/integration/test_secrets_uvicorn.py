"""Nothing sensitive leaves the process: a real uvicorn, a real Sentry transport, real OTLP.

A FastAPI endpoint receives a body full of secrets, sends an alert whose context holds one,
and raises; another gets secrets in its query string. Every byte that leaves the server
(Sentry envelopes, OTLP export requests, its log output with the access log, the alert
receivers' requests) is searched for each secret. docs/security.md cites these tests.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.http_standin import ROOT, StandIn
from tests.sentry_stand_in import SentryStandIn
from tests.support import OTLPReceiver, UvicornProcess, otlp_value

pytestmark = pytest.mark.integration

BODY_SECRETS = ("hunter2-body-password", "ak-body-api-key", "tok-body-session")
QUERY_SECRETS = ("qs-token-value", "qs-apikey-value", "qs-password-value")
# Credentials in the alert destinations' URLs: the Slack and webhook paths, userinfo.
URL_SECRETS = ("slackpathsecret", "hookuser", "hookpass", "hookpathsecret", "pduser", "pdpass")
HARMLESS = "harmless-note-42"

APP = """
from fastapi import Body, FastAPI

from amani_observability import ObservabilitySettings, instrument
from amani_observability.alerts import send_alert

app = FastAPI(telemetry={"tracing": False})


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/accounts/{account_id}")
async def update_account(account_id: int, data: dict = Body(...)) -> dict:
    await send_alert(
        "account update failed",
        "error",
        context={
            "account": account_id,
            "api_key": data["account"]["api_key"],
            "note": data["note"],
        },
        channels=["slack", "webhook", "pagerduty"],
    )
    raise RuntimeError(f"could not update account {account_id}")


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict:
    return {"id": item_id}


instrument(app, ObservabilitySettings())
"""


def test_no_secret_reaches_sentry_otlp_logs_or_alert_receivers(tmp_path: Path) -> None:
    (tmp_path / "secret_app.py").write_text(textwrap.dedent(APP))
    with SentryStandIn() as sentry, OTLPReceiver() as otlp, StandIn() as receivers:
        base = f"127.0.0.1:{receivers.port}"
        env = {
            "PYTHONPATH": os.pathsep.join((str(ROOT), str(tmp_path))),
            "SENTRY_DSN": sentry.dsn,
            "TRACING_ENABLED": "true",
            "OTLP_ENDPOINT": otlp.endpoint,
            "SLACK_WEBHOOK_URL": f"http://{base}/services/T0/B0/slackpathsecret",
            "ALERT_WEBHOOK_URL": f"http://hookuser:hookpass@{base}/hooks/hookpathsecret",
            "PAGERDUTY_API_KEY": "pdroutingkey0123456789abcdef0123",
            "PAGERDUTY_EVENTS_URL": f"http://pduser:pdpass@{base}/v2/enqueue",
            "ALERT_THROTTLE_SECONDS": "0",
        }
        with UvicornProcess(
            "secret_app:app", free_port(), env=env, log_path=tmp_path / "uvicorn.log"
        ) as server:
            failed = httpx.post(
                server.base_url + "/accounts/7",
                json={
                    "password": BODY_SECRETS[0],
                    "account": {"api_key": BODY_SECRETS[1]},
                    "sessions": [{"token": BODY_SECRETS[2]}],
                    "note": HARMLESS,
                },
                timeout=30,
            )
            looked_up = httpx.get(
                server.base_url + "/items/5?token=qs-token-value&api_key=qs-apikey-value"
                "&password=qs-password-value&page=2",
            )
        # uvicorn stopped: its lifespan shutdown flushed Sentry and the span processor.
        log = server.output().encode()
        envelopes = b"".join(envelope.serialize() for envelope in sentry.envelopes)
        exported = b"".join(request.SerializeToString() for request in otlp.requests)
        spans = otlp.spans()
        [event] = sentry.events()
        alerts = {r.path: r for r in receivers.requests}

    assert (failed.status_code, looked_up.status_code) == (500, 200)
    everything_sent = {"sentry": envelopes, "otlp": exported, "log": log}
    secrets = (*BODY_SECRETS, *QUERY_SECRETS, *URL_SECRETS)
    leaks = [
        (where, secret)
        for where, sent in everything_sent.items()
        for secret in secrets
        if secret.encode() in sent
    ]
    assert leaks == []
    # The handler's own variables still help debugging: harmless values stay readable.
    assert HARMLESS.encode() in envelopes
    [handler] = [
        frame
        for frame in event["exception"]["values"][-1]["stacktrace"]["frames"]
        if frame["function"] == "update_account"
    ]
    assert handler["vars"]["data"] == {
        "password": "[redacted]",
        "account": {"api_key": "[redacted]"},
        "sessions": [{"token": "[redacted]"}],
        "note": f"'{HARMLESS}'",
    }
    # The library's own sends are no part of the service's telemetry.
    assert sorted(span.name for span in spans) == [
        "GET /items/{item_id}",
        "POST /accounts/{account_id}",
    ]
    assert [
        c for c in event.get("breadcrumbs", {}).get("values", []) if c.get("category") == "httplib"
    ] == []
    [item_span] = [span for span in spans if span.name == "GET /items/{item_id}"]
    attributes = {a.key: otlp_value(a.value) for a in item_span.attributes}
    assert attributes["url.query"] == (
        "token=[redacted]&api_key=[redacted]&password=[redacted]&page=2"
    )
    assert (
        b'"url": "/items/5?token=[redacted]&api_key=[redacted]&password=[redacted]&page=2"' in log
    )
    # Alert receivers get the alert, with the secret in its context redacted.
    webhook = alerts["/hooks/hookpathsecret"].json()
    assert webhook["context"] == {"account": 7, "api_key": "[redacted]", "note": HARMLESS}
    assert alerts["/v2/enqueue"].json()["payload"]["custom_details"] == webhook["context"]
    assert BODY_SECRETS[1].encode() not in alerts["/services/T0/B0/slackpathsecret"].body
