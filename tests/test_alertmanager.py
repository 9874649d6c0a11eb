"""The `alertmanager` channel against loopback servers standing in for the instances of an
Alertmanager cluster: the API v2 body, fan-out to every instance, resolve, the TTL.
The real HA pair is driven in tests/integration/test_alertmanager_ha.py."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from amani_observability import ConfigurationError, ObservabilitySettings
from amani_observability.alerts import (
    SERVICE_ALERTS_RUNBOOK,
    AlertDispatcher,
    AlertResult,
)
from amani_observability.alerts._channels import alertname_slug
from amani_observability.assets import runbook_url
from amani_observability.cli import _mask as mask
from amani_observability.cli import main
from tests import test_alerts
from tests.http_standin import Reply, StandIn
from tests.test_alerts import FAST, sent

API = "/api/v2/alerts"
# The dispatcher tests' fixtures: the autouse reset of alert state, the stand-in server.
reset_alert_state = test_alerts.reset_alert_state
server = test_alerts.server
DEFAULT_RUNBOOK = runbook_url(*SERVICE_ALERTS_RUNBOOK)


def am_settings(server: StandIn, **overrides: Any) -> ObservabilitySettings:
    values: dict[str, Any] = {
        "service_name": "payments",
        "environment": "prod",
        "log_json": False,
        # Two instances of one cluster; the second written with a trailing slash.
        "alertmanager_url": f"{server.url('/am-0')},{server.url('/am-1/')}",
        "alert_timeout_seconds": 5.0,
        "alert_max_retries": 1,
    }
    values.update(overrides)
    return ObservabilitySettings(**values)


@pytest.fixture
async def dispatcher(server: StandIn) -> AsyncIterator[AlertDispatcher]:
    async with AlertDispatcher(am_settings(server), backoff=FAST) as instance:
        yield instance


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_every_instance_gets_the_same_alert_with_identifying_labels(
    server: StandIn, dispatcher: AlertDispatcher
) -> None:
    results = await dispatcher.send_alert(
        "Payments failing",
        "critical",
        {"rate": "12%", "order-id": 7, "3ds": True},
        channels=["alertmanager"],
    )
    assert results == {"alertmanager": AlertResult("alertmanager", True, "delivered", 200, 2, None)}
    (first,) = server.received("/am-0" + API)
    (second,) = server.received("/am-1" + API)
    assert first.body == second.body
    assert first.headers["content-type"] == "application/json"
    (alert,) = first.json()
    starts, ends = when(alert.pop("startsAt")), when(alert.pop("endsAt"))
    assert ends - starts == timedelta(seconds=300)
    assert alert == {
        "labels": {
            "alertname": "PaymentsFailing",
            "severity": "critical",
            "service": "payments",
            "environment": "prod",
        },
        "annotations": {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "rate": "12%",
            "order_id": "7",
            "_3ds": "true",
            "summary": "Payments failing",
            "description": (
                f"Payments failing\nhost: {socket.gethostname()}\npid: {os.getpid()}\n"
                "rate: 12%\norder-id: 7\n3ds: true"
            ),
            "runbook_url": DEFAULT_RUNBOOK,
        },
    }
    # One alert, one count, however many instances received it.
    assert sent("alertmanager", "delivered") == 1.0


async def test_resolve_ends_the_alert_now_with_the_same_labels(
    server: StandIn, dispatcher: AlertDispatcher
) -> None:
    context = {"alertname": "PaymentsDown", "runbook_url": "https://wiki.example.com/pay"}
    await dispatcher.send_alert("Payments down", "critical", context, channels="alertmanager")
    results = await dispatcher.send_alert(
        "Payments down", "critical", context, channels="alertmanager", action="resolve"
    )
    assert results["alertmanager"].outcome == "delivered"
    trigger, resolve = (request.json()[0] for request in server.received("/am-0" + API))
    assert (
        resolve["labels"]
        == trigger["labels"]
        == {
            "alertname": "PaymentsDown",
            "severity": "critical",
            "service": "payments",
            "environment": "prod",
        }
    )
    assert resolve["endsAt"] == resolve["startsAt"]
    assert when(trigger["endsAt"]) - when(trigger["startsAt"]) == timedelta(seconds=300)
    assert resolve["annotations"]["runbook_url"] == "https://wiki.example.com/pay"
    assert "alertname" not in resolve["annotations"]


async def test_the_ttl_setting_sets_how_long_a_trigger_lives(server: StandIn) -> None:
    settings = am_settings(server, alertmanager_alert_ttl_seconds=90)
    async with AlertDispatcher(settings, backoff=FAST) as dispatcher:
        await dispatcher.send_alert("Queue slow", "warning", channels=["alertmanager"])
    (alert,) = server.received("/am-0" + API)[0].json()
    assert when(alert["endsAt"]) - when(alert["startsAt"]) == timedelta(seconds=90)


async def test_one_instance_accepting_is_enough_and_the_other_is_named(
    server: StandIn, dispatcher: AlertDispatcher
) -> None:
    server.script("/am-0" + API, Reply(503, b"down"), Reply(503, b"down"))
    results = await dispatcher.send_alert("Half the cluster", "error", channels="alertmanager")
    assert results["alertmanager"] == AlertResult(
        "alertmanager",
        True,
        "delivered",
        200,
        3,
        "receiver 1 of 2: HTTP 503: down; gave up after retries",
    )
    assert len(server.received("/am-0" + API)) == 2  # first try and one retry
    assert sent("alertmanager", "delivered") == 1.0


async def test_no_instance_accepting_fails_or_rejects(
    server: StandIn, dispatcher: AlertDispatcher
) -> None:
    server.script("/am-0" + API, Reply(400, b"bad alert"))
    server.script("/am-1" + API, Reply(400, b"bad alert"))
    rejected = await dispatcher.send_alert("Invalid", "info", channels="alertmanager")
    assert rejected["alertmanager"] == AlertResult(
        "alertmanager",
        False,
        "rejected",
        400,
        2,
        "receiver 1 of 2: HTTP 400: bad alert; receiver 2 of 2: HTTP 400: bad alert",
    )
    server.script("/am-0" + API, Reply(400, b"bad alert"))
    server.script("/am-1" + API, Reply(500, b"oops"), Reply(500, b"oops"))
    failed = await dispatcher.send_alert("Broken", "info", channels="alertmanager")
    assert failed["alertmanager"].outcome == "failed"
    assert sent("alertmanager", "rejected") == 1.0
    assert sent("alertmanager", "failed") == 1.0


async def test_submit_queues_a_resolve(server: StandIn, dispatcher: AlertDispatcher) -> None:
    assert dispatcher.submit("Cache cold", "warning", channels=["alertmanager"], action="resolve")
    await dispatcher.aclose()
    (alert,) = server.received("/am-1" + API)[0].json()
    assert alert["endsAt"] == alert["startsAt"]
    assert alert["labels"]["alertname"] == "CacheCold"


async def test_unknown_actions_are_refused_naming_the_choices(
    dispatcher: AlertDispatcher,
) -> None:
    with pytest.raises(
        ValueError, match=r"^unknown alert action 'ack'; choose one of trigger, resolve$"
    ):
        await dispatcher.send_alert("x", "info", channels="alertmanager", action="ack")
    with pytest.raises(ValueError, match=r"^unknown alert action 'acknowledge'; choose one of"):
        dispatcher.submit("x", "info", channels="alertmanager", action="acknowledge")


async def test_without_alertmanager_url_the_channel_is_not_configured() -> None:
    async with AlertDispatcher(ObservabilitySettings(log_json=False)) as dispatcher:
        results = await dispatcher.send_alert("x", "info", channels="alertmanager")
    assert results["alertmanager"] == AlertResult(
        "alertmanager", False, "not_configured", None, 0, "alertmanager is not configured"
    )


async def test_slack_shows_a_resolve_as_resolved(server: StandIn) -> None:
    settings = am_settings(server, slack_webhook_url=server.url("/slack"))
    async with AlertDispatcher(settings, backoff=FAST, slack_pace_seconds=0.0) as dispatcher:
        await dispatcher.send_alert("Disk full", "critical", channels="slack", action="resolve")
    body = server.received("/slack")[0].json()
    assert body["text"] == "[RESOLVED] payments (prod): Disk full"
    assert body["attachments"][0]["color"] == "#2EB67D"


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("Payments failing", "PaymentsFailing"),
        ("db pool exhausted!", "DbPoolExhausted"),
        ("  queue-depth: high  ", "QueueDepthHigh"),
        ("5xx rate above SLO", "Alert5xxRateAboveSLO"),
        ("¡¿?!", "Alert"),
        ("x" * 300, "X" + "x" * 127),
    ],
)
def test_alertname_is_a_stable_camel_case_slug_of_the_message(message: str, name: str) -> None:
    assert alertname_slug(message) == name


def test_alertmanager_url_takes_a_comma_list_of_urls_and_never_echoes_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERTMANAGER_URL", " http://am-0:9093 , http://am-1:9093,")
    assert ObservabilitySettings().alertmanager_url == ["http://am-0:9093", "http://am-1:9093"]
    monkeypatch.setenv("ALERTMANAGER_URL", "http://am-0:9093,user:s3cret@am-1")
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings()
    assert str(caught.value) == (
        "invalid observability settings: ALERTMANAGER_URL: URL 2 is not an http:// or https:// URL"
    )
    monkeypatch.setenv("ALERTMANAGER_URL", "")
    monkeypatch.setenv("ALERTMANAGER_ALERT_TTL_SECONDS", "0")
    with pytest.raises(
        ConfigurationError, match=r"ALERTMANAGER_ALERT_TTL_SECONDS=0: must be greater than 0.0$"
    ):
        ObservabilitySettings()


def test_check_sends_a_test_alert_then_resolves_it(
    server: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALERTMANAGER_URL", server.url("/am-0"))
    monkeypatch.setenv("LOG_JSON", "false")
    code = main(["check", "--test-alert", "alertmanager"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "ok    alert alertmanager: test alert delivered (outcome delivered, HTTP 200)" in lines
    assert "ok    alert alertmanager: test alert resolved (outcome delivered, HTTP 200)" in lines
    trigger, resolve = (request.json()[0] for request in server.received("/am-0" + API))
    assert trigger["labels"] == resolve["labels"]
    assert trigger["labels"]["alertname"] == "AmaniObservabilityCheckTestAlert"
    assert resolve["endsAt"] == resolve["startsAt"]
    assert "ALERTMANAGER_URL = http://127.0.0.1:" in "\n".join(lines)


async def test_credentials_in_an_alertmanager_url_stay_out_of_results_and_check_output(
    server: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://admin:s3cretpass@127.0.0.1:{server.port}/am-0"
    server.script("/am-0" + API, Reply(400, b"echo http://admin:s3cretpass@127.0.0.1"))
    async with AlertDispatcher(am_settings(server, alertmanager_url=url)) as dispatcher:
        results = await dispatcher.send_alert("x", "info", channels="alertmanager")
    assert results["alertmanager"].outcome == "rejected"
    assert "s3cretpass" not in repr(results)
    assert mask([url, "http://am-1:9093"]) == (
        f"http://[redacted]@127.0.0.1:{server.port}/am-0,http://am-1:9093"
    )


def test_the_default_runbook_url_lands_on_the_service_alerts_section() -> None:
    from tests.test_docs_reference import RUNBOOKS, anchors

    page, anchor = SERVICE_ALERTS_RUNBOOK
    assert anchor in anchors(RUNBOOKS / page)
    assert DEFAULT_RUNBOOK.endswith(f"/docs/runbooks/{page}#{anchor}")


def test_the_start_up_summary_counts_the_alertmanager_instances_and_hides_passwords() -> None:
    from amani_observability._startup import summary

    settings = ObservabilitySettings(
        log_json=False, alertmanager_url="http://am-0:9093,http://user:s3cretpass@am-1:9093"
    )
    line = summary(settings, [], None)
    assert "; alert channels: alertmanager (2 instances); " in line
    assert "s3cretpass" not in line


async def test_secret_context_values_reach_no_annotation(
    server: StandIn, dispatcher: AlertDispatcher
) -> None:
    """The library's redaction policy (REDACT_KEYS) applies to Alertmanager annotations."""
    context = {"api_token": "tok-s3cret", "db": "postgres://app:pw-s3cret@db/main", "rows": 3}
    await dispatcher.send_alert("Export failed", "error", context, channels="alertmanager")
    (alert,) = server.received("/am-0" + API)[0].json()
    annotations = alert["annotations"]
    assert (annotations["api_token"], annotations["db"], annotations["rows"]) == (
        "[redacted]",
        "postgres://[redacted]@db/main",
        "3",
    )
    assert "s3cret" not in server.received("/am-0" + API)[0].body.decode()
