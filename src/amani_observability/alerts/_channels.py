"""The shipped alert channels (Slack, PagerDuty Events v2, a JSON webhook, Alertmanager)
and their bodies.

A channel only turns an `Alert` into HTTP POSTs (`ChannelRequest`s); the dispatcher in
alerts.py owns everything around it: retries, deadlines, pacing, throttling, metrics.
Secrets (webhook URLs, the PagerDuty routing key) stay in `SecretStr` until the request
is built, and the request's `repr()` hides them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import SecretStr

from .._redaction import mask_userinfo

Severity = Literal["critical", "error", "warning", "info"]
Action = Literal["trigger", "acknowledge", "resolve"]
SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "info")
ACTIONS: tuple[str, ...] = ("trigger", "acknowledge", "resolve")

# Slack: section text <= 3000 characters, a section's field <= 2000, <= 10 fields per
# section, <= 50 blocks per message (Block Kit reference). The `text` fallback is what
# notifications show; we keep it to the section limit too.
SLACK_TEXT_LIMIT = 3000
SLACK_FIELD_LIMIT = 2000
SLACK_FIELDS_PER_SECTION = 10
SLACK_MAX_BLOCKS = 50
# PagerDuty Events v2: payload.summary <= 1024 characters, dedup_key <= 255.
PAGERDUTY_SUMMARY_LIMIT = 1024
PAGERDUTY_DEDUP_KEY_LIMIT = 255
TRUNCATION_MARKER = "…[truncated]"

SLACK_COLOURS: Mapping[str, str] = {
    "critical": "#D0021B",
    "error": "#F5A623",
    "warning": "#F8E71C",
    "info": "#4A90E2",
}
SLACK_RESOLVED_COLOUR = "#2EB67D"


@dataclass(frozen=True)
class Alert:
    """One alert as the dispatcher hands it to each channel."""

    message: str
    severity: Severity
    context: Mapping[str, Any]
    timestamp: datetime
    service: str
    environment: str
    host: str
    action: Action = "trigger"
    dedup_key: str | None = None


@dataclass(frozen=True)
class ChannelRequest:
    """The POST a channel wants sent. `url` and `content` may hold secrets: never shown."""

    url: str = field(repr=False)
    content: bytes = field(repr=False)
    # Requests with the same pace key are spaced `pace_seconds` apart (Slack: per webhook).
    pace_key: str | None = field(default=None, repr=False)
    pace_seconds: float = 0.0
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    # Strings that must never appear in an error text (a routing key inside the body).
    secrets: tuple[str, ...] = field(default=(), repr=False)


@runtime_checkable
class AlertChannel(Protocol):
    """What a channel provides. Add your own with `AlertDispatcher(..., channels=[...])`.

    `name` is what callers pass in `channels=`; `request()` returns the POST to send, or
    None when the channel is not configured (the result is then `not_configured`). It may
    return several POSTs (one per replica of a clustered receiver, as Alertmanager wants):
    they go out at once, each with its own retries and deadline, and the alert counts as
    delivered when at least one of them was. The
    dispatcher treats 2xx as delivered; 408, 429 and 5xx (and network errors) as worth
    retrying; any other status as a permanent rejection.
    """

    name: str

    def request(self, alert: Alert) -> ChannelRequest | Sequence[ChannelRequest] | None: ...


@runtime_checkable
class DigestChannel(Protocol):
    """A paced channel that can carry several alerts in one message (Slack). When its
    pacing cannot deliver the backlog in time, the dispatcher groups pending alerts, up
    to `digest_limit` per message, the way Alertmanager groups notifications."""

    name: str
    pace_key: str | None
    pace_seconds: float
    digest_limit: int

    def request(self, alert: Alert) -> ChannelRequest | None: ...

    def digest(self, alerts: Sequence[Alert]) -> ChannelRequest | None: ...


def dumps(body: Any) -> bytes:
    # default=str: context values such as datetimes or Decimals must not make a send fail.
    return json.dumps(body, default=str, ensure_ascii=False, separators=(",", ":")).encode()


def json_safe(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context as plain JSON types (what the receiver will see)."""
    loaded: dict[str, Any] = json.loads(dumps(dict(context)))
    return loaded


def cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending with a marker when something was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def slack_escape(text: str, limit: int) -> str:
    """Escape `&`, `<`, `>` so `<!channel>` or `<@U123>` in user text cannot ping anyone,
    then cut to `limit` without leaving half an `&amp;` behind."""
    escaped = text.translate(_SLACK_ESCAPES)
    if len(escaped) <= limit:
        return escaped
    head = _PARTIAL_ENTITY.sub("", escaped[: limit - len(TRUNCATION_MARKER)])
    return head + TRUNCATION_MARKER


def default_dedup_key(service: str, summary: str) -> str:
    """Stable across processes and restarts: repeats of an alert group into one incident,
    and `resolve` with the same service and summary closes it."""
    digest = hashlib.sha256(f"{service}\x00{summary}".encode()).hexdigest()[:32]
    return f"{service[: PAGERDUTY_DEDUP_KEY_LIMIT - 34]}-{digest}"


def _url_secrets(url: str) -> tuple[str, ...]:
    # A webhook's path is its credential; a receiver may echo it back without the host.
    path = urlsplit(url).path
    return (url, path) if len(path) > 1 else (url,)


class SlackChannel:
    """Slack incoming webhook: a `text` fallback plus an attachment coloured by severity."""

    name = "slack"
    # One block for the digest's headline and one for its footer; one per alert between.
    digest_limit = SLACK_MAX_BLOCKS - 2

    def __init__(self, webhook_url: SecretStr | None, *, pace_seconds: float = 1.0) -> None:
        self._url = webhook_url
        self.pace_seconds = pace_seconds
        # Slack allows about one message per second per webhook (HTTP 429 beyond).
        self.pace_key = (
            None
            if webhook_url is None
            else "slack:" + hashlib.sha256(webhook_url.get_secret_value().encode()).hexdigest()
        )

    def __repr__(self) -> str:
        return f"SlackChannel(configured={self._url is not None})"

    def request(self, alert: Alert) -> ChannelRequest | None:
        return self._post(slack_body(alert))

    def digest(self, alerts: Sequence[Alert]) -> ChannelRequest | None:
        return self._post(slack_digest_body(alerts))

    def _post(self, body: dict[str, Any]) -> ChannelRequest | None:
        if self._url is None:
            return None
        url = self._url.get_secret_value()
        return ChannelRequest(
            url=url,
            content=dumps(body),
            pace_key=self.pace_key,
            pace_seconds=self.pace_seconds,
            secrets=_url_secrets(url),
        )


def slack_body(alert: Alert) -> dict[str, Any]:
    label = "RESOLVED" if alert.action == "resolve" else alert.severity.upper()
    where = slack_escape(f"{alert.service} ({alert.environment})", 200)
    headline = f"[{label}] {where}: "
    text = headline + slack_escape(alert.message, SLACK_TEXT_LIMIT - len(headline))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
    ]
    fields = [
        {
            "type": "mrkdwn",
            "text": slack_escape(f"*{key}*\n{value}", SLACK_FIELD_LIMIT),
        }
        for key, value in json_safe(alert.context).items()
    ]
    # One block for the headline and one for the footer; the rest may hold fields.
    room = (SLACK_MAX_BLOCKS - 2) * SLACK_FIELDS_PER_SECTION
    if len(fields) > room:
        left_out = len(fields) - room + 1
        fields = [
            *fields[: room - 1],
            {"type": "mrkdwn", "text": f"{TRUNCATION_MARKER} {left_out} more fields"},
        ]
    for start in range(0, len(fields), SLACK_FIELDS_PER_SECTION):
        blocks.append(
            {"type": "section", "fields": fields[start : start + SLACK_FIELDS_PER_SECTION]}
        )
    colour = SLACK_RESOLVED_COLOUR if alert.action == "resolve" else SLACK_COLOURS[alert.severity]
    footer = slack_escape(f"{alert.host} · {alert.timestamp.isoformat(timespec='seconds')}", 300)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return {
        "text": text,
        "attachments": [{"color": colour, "blocks": blocks}],
    }


def slack_digest_body(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Several alerts in one Slack message: a headline, one section per alert (its text
    and context), a footer; coloured by the most severe. At most `digest_limit` alerts."""
    first = alerts[0]
    worst = min(alerts, key=lambda alert: SEVERITIES.index(alert.severity)).severity
    where = slack_escape(f"{first.service} ({first.environment})", 200)
    headline = f"{len(alerts)} alerts from {where}, grouped to keep within Slack's rate limit"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
    ]
    for alert in alerts:
        label = f"*[{alert.severity.upper()}]* "
        details = " · ".join(f"{key}: {value}" for key, value in json_safe(alert.context).items())
        line = slack_escape(alert.message, SLACK_TEXT_LIMIT - len(label))
        room = SLACK_TEXT_LIMIT - len(label) - len(line) - 1
        if details and room > 2 * len(TRUNCATION_MARKER):
            line += "\n" + slack_escape(details, room)
        text = label + line
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    first_at = first.timestamp.isoformat(timespec="seconds")
    last_at = alerts[-1].timestamp.isoformat(timespec="seconds")
    footer = slack_escape(f"{first.host} · {first_at} to {last_at}", 300)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    summary = "; ".join(f"[{a.severity.upper()}] {a.message}" for a in alerts)
    text = headline + ": " + slack_escape(summary, SLACK_TEXT_LIMIT - len(headline) - 2)
    return {"text": text, "attachments": [{"color": SLACK_COLOURS[worst], "blocks": blocks}]}


class PagerDutyChannel:
    """PagerDuty Events API v2 (`POST /v2/enqueue`); the routing key is the credential."""

    name = "pagerduty"

    def __init__(self, routing_key: SecretStr | None, *, events_url: str) -> None:
        self._key = routing_key
        self._events_url = events_url

    def __repr__(self) -> str:
        return (
            f"PagerDutyChannel(configured={self._key is not None}, "
            f"events_url={mask_userinfo(self._events_url)!r})"
        )

    def request(self, alert: Alert) -> ChannelRequest | None:
        if self._key is None:
            return None
        key = self._key.get_secret_value()
        return ChannelRequest(
            url=self._events_url, content=dumps(pagerduty_body(alert, key)), secrets=(key,)
        )


def pagerduty_body(alert: Alert, routing_key: str) -> dict[str, Any]:
    dedup_key = alert.dedup_key or default_dedup_key(alert.service, alert.message)
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": alert.action,
        "dedup_key": dedup_key[:PAGERDUTY_DEDUP_KEY_LIMIT],
    }
    if alert.action != "trigger":
        # acknowledge and resolve need only the key; PagerDuty ignores a payload there.
        return body
    component = alert.context.get("component")
    body["payload"] = {
        "summary": cut(alert.message, PAGERDUTY_SUMMARY_LIMIT),
        "source": f"{alert.service}@{alert.host}",
        "severity": alert.severity,
        "timestamp": alert.timestamp.isoformat(),
        "component": str(component) if component is not None else alert.service,
        "group": alert.environment,
        "custom_details": json_safe(alert.context),
    }
    return body


class WebhookChannel:
    """A generic JSON POST for chat tools, ticketing or your own receiver."""

    name = "webhook"

    def __init__(self, url: SecretStr | None) -> None:
        self._url = url

    def __repr__(self) -> str:
        return f"WebhookChannel(configured={self._url is not None})"

    def request(self, alert: Alert) -> ChannelRequest | None:
        if self._url is None:
            return None
        url = self._url.get_secret_value()
        return ChannelRequest(
            url=url, content=dumps(webhook_body(alert)), secrets=_url_secrets(url)
        )


def webhook_body(alert: Alert) -> dict[str, Any]:
    return {
        "message": alert.message,
        "severity": alert.severity,
        "action": alert.action,
        "dedup_key": alert.dedup_key or default_dedup_key(alert.service, alert.message),
        "service": alert.service,
        "environment": alert.environment,
        "host": alert.host,
        "timestamp": alert.timestamp.isoformat(),
        "context": json_safe(alert.context),
    }


# Alertmanager label names (before its UTF-8 mode): letters, digits and underscores.
_LABEL_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_]")
_WORDS = re.compile(r"[A-Za-z0-9]+")
# An alertname longer than this is cut: a label value is part of every notification.
ALERTNAME_LIMIT = 128
# Annotation values Alertmanager shows in notifications; a huge context must not bloat them.
ANNOTATION_LIMIT = 4096


def alertname_slug(message: str) -> str:
    """A stable CamelCase `alertname` for a message without one: "db pool exhausted!" ->
    "DbPoolExhausted". Equal messages give equal names in every replica."""
    words = _WORDS.findall(message)
    name = "".join(word[:1].upper() + word[1:] for word in words)[:ALERTNAME_LIMIT]
    if not name or name[0].isdigit():
        name = ("Alert" + name)[:ALERTNAME_LIMIT]
    return name


def _annotation_name(key: str) -> str:
    name = _LABEL_NAME_CHARACTERS.sub("_", key) or "_"
    return "_" + name if name[0].isdigit() else name


def _annotation_text(value: Any) -> str:
    # Context values arrive redacted (the dispatcher applies REDACT_KEYS to every alert).
    text = value if isinstance(value, str) else dumps(value).decode()
    return cut(text, ANNOTATION_LIMIT)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_body(
    alert: Alert, *, ttl_seconds: float, runbook_url: str, pid: int
) -> list[dict[str, Any]]:
    """The `POST /api/v2/alerts` body: one alert whose labels are the same from every
    replica (so Alertmanager merges them) and whose annotations carry this replica's facts.

    A trigger ends `ttl_seconds` after it was raised unless sent again; a resolve ends now.
    """
    context = json_safe(alert.context)
    given_name = context.pop("alertname", None)
    alertname = (
        cut(str(given_name), ALERTNAME_LIMIT) if given_name else alertname_slug(alert.message)
    )
    labels = {
        "alertname": alertname,
        "severity": alert.severity,
        "service": alert.service,
        "environment": alert.environment,
    }
    runbook = context.pop("runbook_url", None)
    facts = {"host": alert.host, "pid": pid, **context}
    details = "\n".join(f"{key}: {_annotation_text(value)}" for key, value in facts.items())
    annotations = {_annotation_name(key): _annotation_text(value) for key, value in facts.items()}
    annotations.update(
        summary=_annotation_text(alert.message),
        description=_annotation_text(f"{alert.message}\n{details}"),
        runbook_url=_annotation_text(runbook) if runbook else runbook_url,
    )
    ends = (
        alert.timestamp
        if alert.action == "resolve"
        else alert.timestamp + timedelta(seconds=ttl_seconds)
    )
    return [
        {
            "labels": labels,
            "annotations": annotations,
            "startsAt": _rfc3339(alert.timestamp),
            "endsAt": _rfc3339(ends),
        }
    ]


def _password(url: str) -> tuple[str, ...]:
    password = urlsplit(url).password
    return (password,) if password else ()


class AlertmanagerChannel:
    """Prometheus Alertmanager (`POST /api/v2/alerts`), to every instance of an HA cluster.

    Like Prometheus, it sends each alert to every listed instance; the cluster gossips
    which notifications went out, so replicas of a service and instances of the cluster
    together still notify once. `runbook_url` is the annotation's value when the
    alert's context carries no `runbook_url` of its own.
    """

    name = "alertmanager"

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        ttl_seconds: float,
        runbook_url: str,
    ) -> None:
        self._urls = tuple(url.rstrip("/") + "/api/v2/alerts" for url in base_urls)
        self._ttl_seconds = ttl_seconds
        self._runbook_url = runbook_url

    def __repr__(self) -> str:
        return f"AlertmanagerChannel(instances={len(self._urls)}, ttl_seconds={self._ttl_seconds})"

    def request(self, alert: Alert) -> tuple[ChannelRequest, ...] | None:
        if not self._urls:
            return None
        content = dumps(
            alertmanager_body(
                alert, ttl_seconds=self._ttl_seconds, runbook_url=self._runbook_url, pid=os.getpid()
            )
        )
        return tuple(
            # The path is the API's, no secret; a password in the URL is.
            ChannelRequest(url=url, content=content, secrets=_password(url))
            for url in self._urls
        )
