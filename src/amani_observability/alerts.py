"""Alerts to Slack, PagerDuty (Events API v2) and a JSON webhook, from async code.

    from amani_observability.alerts import send_alert, get_dispatcher

    results = await send_alert("Payments failing", "critical", context={"rate": "12%"})
    get_dispatcher().submit("Queue backing up", "warning")   # fire and forget

`instrument()` builds one `AlertDispatcher` from its settings, installs it at lifespan
start-up (`get_dispatcher()`) and drains and closes it at shutdown. The module functions
use the installed dispatcher; outside a running app they build one from the environment
for that call. A delivery problem never raises: each channel reports an `AlertResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, cast

import httpx

from ._alert_channels import (
    ACTIONS,
    SEVERITIES,
    Action,
    Alert,
    AlertChannel,
    ChannelRequest,
    PagerDutyChannel,
    Severity,
    SlackChannel,
    WebhookChannel,
)
from ._alert_delivery import (
    OUTCOMES,
    AlertResult,
    Backoff,
    Outcome,
    Pacer,
    Throttle,
    alerts_sent_counter,
    deliver,
    hide_in_httpx_logs,
    new_client,
)
from ._alert_queue import Backlog
from .settings import ObservabilitySettings

__all__ = [
    "ACTIONS",
    "OUTCOMES",
    "SEVERITIES",
    "Action",
    "Alert",
    "AlertChannel",
    "AlertDispatcher",
    "AlertResult",
    "Backoff",
    "ChannelRequest",
    "Outcome",
    "Severity",
    "get_dispatcher",
    "send_alert",
    "send_pagerduty_alert",
    "send_slack_alert",
]

logger = logging.getLogger("amani_observability.alerts")

DEFAULT_CHANNELS: tuple[str, ...] = ("slack", "pagerduty")
# Under Lifecycle's 5 s per shutdown hook, so we still close the client ourselves.
DRAIN_TIMEOUT = 4.0
# Sends the queue worker runs at once: enough to hide a slow endpoint, few enough to
# keep a burst from opening a hundred connections.
WORKERS = 2
# The same kind of delivery failure is logged at most once per this many seconds.
LOG_INTERVAL = 60.0

_installed: AlertDispatcher | None = None
# What submit() queues: message, severity, context, channel names, time.time().
_Queued = tuple[str, str, "dict[str, Any] | None", tuple[str, ...], float]


class AlertDispatcher:
    """Sends alerts to its channels over one shared `httpx.AsyncClient`.

    Built from `ObservabilitySettings` (SLACK_WEBHOOK_URL, PAGERDUTY_API_KEY,
    PAGERDUTY_EVENTS_URL, ALERT_WEBHOOK_URL, ALERT_* limits). Extra `channels` join the
    shipped `slack`, `pagerduty` and `webhook` (a channel with the same name replaces one).
    `backoff`, `slack_pace_seconds` and `transport` exist so tests need not sleep.
    """

    def __init__(
        self,
        settings: ObservabilitySettings | None = None,
        *,
        channels: Iterable[AlertChannel] = (),
        backoff: Backoff | None = None,
        slack_pace_seconds: float = 1.0,
        drain_timeout: float = DRAIN_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = settings if settings is not None else ObservabilitySettings()
        self._service = settings.service_name
        self._environment = settings.environment
        self._host = socket.gethostname()
        self._timeout = settings.alert_timeout_seconds
        self._max_retries = settings.alert_max_retries
        self._backoff = backoff or Backoff()
        self._drain_timeout = drain_timeout
        self._transport = transport
        self._channels: dict[str, AlertChannel] = {}
        shipped: tuple[AlertChannel, ...] = (
            SlackChannel(settings.slack_webhook_url, pace_seconds=slack_pace_seconds),
            PagerDutyChannel(settings.pagerduty_api_key, events_url=settings.pagerduty_events_url),
            WebhookChannel(settings.alert_webhook_url),
        )
        for channel in (*shipped, *channels):
            self.add_channel(channel)
        for secret in (settings.slack_webhook_url, settings.alert_webhook_url):
            if secret is not None:
                hide_in_httpx_logs(secret.get_secret_value())
        self._counter = alerts_sent_counter()
        self._pacer = Pacer()
        self._client: httpx.AsyncClient | None = None
        self._client_lock = asyncio.Lock()
        self._warm_up: asyncio.Task[httpx.AsyncClient] | None = None
        self._throttle = Throttle(settings.alert_throttle_seconds)
        self._last_logged: dict[tuple[str, str], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: Backlog[_Queued] = Backlog(
            settings.alert_queue_size, WORKERS, self._send_queued
        )
        self._accepting = True
        self._closed = False
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"AlertDispatcher(channels={list(self._channels)}, queued={len(self._backlog)}, "
            f"dropped={self.dropped}, closed={self._closed})"
        )

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._channels)

    def add_channel(self, channel: AlertChannel) -> None:
        """Register a channel (anything with a `name` and a `request(alert)` method)."""
        if not isinstance(channel, AlertChannel) or not isinstance(channel.name, str):
            raise TypeError(f"{channel!r} is not an alert channel (needs name and request())")
        self._channels[channel.name] = channel

    # --- sending -------------------------------------------------------------------------

    async def send_slack_alert(
        self, message: str, severity: str = "warning", context: Mapping[str, Any] | None = None
    ) -> AlertResult:
        alert = self._alert(message, severity, context)
        return await self._send_one("slack", alert)

    async def send_pagerduty_alert(
        self,
        summary: str,
        severity: str = "critical",
        context: Mapping[str, Any] | None = None,
        dedup_key: str | None = None,
        action: str = "trigger",
    ) -> AlertResult:
        if action not in ACTIONS:
            raise ValueError(f"unknown PagerDuty action {action!r}; choose one of {_or(ACTIONS)}")
        alert = self._alert(
            summary, severity, context, action=cast(Action, action), dedup_key=dedup_key
        )
        return await self._send_one("pagerduty", alert)

    async def send_alert(
        self,
        message: str,
        severity: str,
        context: Mapping[str, Any] | None = None,
        channels: Iterable[str] | str = DEFAULT_CHANNELS,
    ) -> dict[str, AlertResult]:
        """Send to every channel at once; each result arrives within its own deadline."""
        names = self._channel_names(channels)
        return await self._send_to(names, self._alert(message, severity, context))

    def submit(
        self,
        message: str,
        severity: str,
        context: Mapping[str, Any] | None = None,
        channels: Iterable[str] | str = DEFAULT_CHANNELS,
    ) -> bool:
        """Queue an alert and return at once (False: dropped, queue full or shut down).

        Callable from the event loop or, once the dispatcher has run on a loop, from
        other threads (sync endpoints in a thread pool)."""
        _check_severity(severity)
        names = self._channel_names(channels)
        if not self._accepting:
            return self._drop(names, "the dispatcher is shut down")
        # Only what must be captured now; the worker builds the alert.
        item = (str(message), severity, dict(context) if context else None, names, time.time())
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and self._loop in (None, running):
            self._start_worker(running)
            return self._enqueue(item)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._enqueue, item)
            except RuntimeError:  # that loop is closed
                return self._drop(names, "its event loop is closed")
            return True
        return self._drop(names, "submit() needs a running event loop")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Install as `get_dispatcher()`; instrument() calls this at lifespan start-up."""
        global _installed
        if self._closed:  # the app's lifespan runs again (tests do that): start afresh
            self._backlog = Backlog(self._backlog.size, WORKERS, self._send_queued)
            self._client = self._warm_up = self._loop = None
            self._accepting, self._closed = True, False
        _installed = self
        # Started outside a loop (instrument() on a serving app): the worker starts on the
        # first submit() instead.
        with contextlib.suppress(RuntimeError):
            self._start_worker(asyncio.get_running_loop())

    async def aclose(self, *, timeout: float | None = None) -> None:
        """Stop accepting, send what is queued (waiting at most `timeout` seconds, default
        4), then close the HTTP client. Alerts still queued after that are dropped."""
        global _installed
        if self._closed:
            return
        self._accepting = False
        if _installed is self:
            _installed = None
        wait = self._drain_timeout if timeout is None else timeout
        left = await self._backlog.drain(wait)
        if left:
            self.dropped += left
            logger.warning(
                "%d queued alerts were not sent within the %g s shutdown wait", left, wait
            )
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        self._closed = True
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> AlertDispatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- internals -----------------------------------------------------------------------

    def _alert(
        self,
        message: str,
        severity: str,
        context: Mapping[str, Any] | None,
        *,
        action: Action = "trigger",
        dedup_key: str | None = None,
        timestamp: float | None = None,
    ) -> Alert:
        _check_severity(severity)
        return Alert(
            message=str(message),
            severity=severity,  # type: ignore[arg-type]
            # A copy: the caller may change its dict while the alert waits in the queue.
            context=dict(context) if context else {},
            timestamp=datetime.fromtimestamp(
                time.time() if timestamp is None else timestamp, timezone.utc
            ),
            service=self._service,
            environment=self._environment,
            host=self._host,
            action=action,
            dedup_key=dedup_key,
        )

    def _channel_names(self, channels: Iterable[str] | str) -> tuple[str, ...]:
        names = (channels,) if isinstance(channels, str) else tuple(dict.fromkeys(channels))
        for name in names:
            if name not in self._channels:
                choices = _or(sorted(self._channels))
                raise ValueError(f"unknown alert channel {name!r}; choose from {choices}")
        return names

    async def _send_one(self, name: str, alert: Alert) -> AlertResult:
        try:
            result = await self._deliver(name, alert)
        except Exception as exc:  # a custom channel's bug must not reach the caller's path
            result = AlertResult(
                name, False, "failed", None, 0, f"channel raised {type(exc).__name__}"
            )
        self._record(result)
        return result

    async def _deliver(self, name: str, alert: Alert) -> AlertResult:
        if self._closed:
            return AlertResult(name, False, "failed", None, 0, "the alert dispatcher is closed")
        request = self._channels[name].request(alert)
        if request is None:
            return AlertResult(name, False, "not_configured", None, 0, f"{name} is not configured")
        key = (name, alert.severity, alert.action, alert.dedup_key or "", alert.message)
        claim = self._throttle.claim(key)
        if claim is None:
            return AlertResult(name, False, "throttled", None, 0, "sent recently; throttled")
        result = await deliver(
            await self._http(),
            name,
            request,
            timeout=self._timeout,
            max_retries=self._max_retries,
            backoff=self._backoff,
            pacer=self._pacer,
        )
        if not result.ok:
            self._throttle.release(key, claim)  # not delivered: a later try may go out
        return result

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    # Building a client loads the CA bundle (tens of milliseconds of CPU):
                    # in a thread, so the event loop never stalls on it.
                    self._client = await asyncio.to_thread(
                        new_client, transport=self._transport, timeout=self._timeout
                    )
        return self._client

    def _record(self, result: AlertResult) -> None:
        self._counter.labels(result.channel, result.outcome).inc()
        if result.outcome in ("failed", "rejected"):
            self._log_rate_limited(
                (result.channel, result.outcome),
                "alert to %s %s after %d attempt(s): %s",
                result.channel, result.outcome, result.attempts, result.error,
            )  # fmt: skip

    def _log_rate_limited(self, key: tuple[str, str], message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._last_logged[key] = now
            logger.warning(message, *args)

    def _start_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._backlog.started and self._accepting:
            self._loop = loop
            self._backlog.start(loop)
            # Build the HTTP client now, so the first alert does not wait for it.
            self._warm_up = loop.create_task(self._http())

    def _enqueue(self, item: _Queued) -> bool:
        if not self._accepting:
            return self._drop(item[3], "the dispatcher is shut down")
        if not self._backlog.put(item):
            return self._drop(item[3], f"the queue is full ({self._backlog.size} alerts)")
        return True

    def _drop(self, names: tuple[str, ...], reason: str) -> bool:
        self.dropped += 1
        for name in names:
            self._counter.labels(name, "dropped").inc()
        self._log_rate_limited(("*", "dropped"), "alert dropped: %s", reason)
        return False

    async def _send_queued(self, item: _Queued) -> None:
        message, severity, context, names, timestamp = item
        await self._send_to(names, self._alert(message, severity, context, timestamp=timestamp))

    async def _send_to(self, names: tuple[str, ...], alert: Alert) -> dict[str, AlertResult]:
        if len(names) == 1:  # no task to create: the common case stays cheap
            return {names[0]: await self._send_one(names[0], alert)}
        results = await asyncio.gather(*(self._send_one(name, alert) for name in names))
        return dict(zip(names, results, strict=True))


def _or(choices: Iterable[str]) -> str:
    return ", ".join(choices)


def _check_severity(severity: str) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f"unknown alert severity {severity!r}; choose one of {_or(SEVERITIES)}")


def get_dispatcher() -> AlertDispatcher:
    """The dispatcher instrument() installed at lifespan start-up."""
    if _installed is None:
        raise RuntimeError(
            "no alert dispatcher is installed: call instrument(app) and run the app's "
            "lifespan, or create an AlertDispatcher(settings) yourself"
        )
    return _installed


async def send_slack_alert(
    message: str, severity: str = "warning", context: Mapping[str, Any] | None = None
) -> AlertResult:
    """Send one alert to Slack (SLACK_WEBHOOK_URL) and return what happened."""
    if _installed is not None:
        return await _installed.send_slack_alert(message, severity, context)
    async with AlertDispatcher() as dispatcher:
        return await dispatcher.send_slack_alert(message, severity, context)


async def send_pagerduty_alert(
    summary: str,
    severity: str = "critical",
    context: Mapping[str, Any] | None = None,
    dedup_key: str | None = None,
    action: str = "trigger",
) -> AlertResult:
    """Trigger, acknowledge or resolve a PagerDuty alert (PAGERDUTY_API_KEY)."""
    if _installed is not None:
        return await _installed.send_pagerduty_alert(summary, severity, context, dedup_key, action)
    async with AlertDispatcher() as dispatcher:
        return await dispatcher.send_pagerduty_alert(summary, severity, context, dedup_key, action)


async def send_alert(
    message: str,
    severity: str,
    context: Mapping[str, Any] | None = None,
    channels: Iterable[str] | str = DEFAULT_CHANNELS,
) -> dict[str, AlertResult]:
    """Send to several channels at once; returns {channel: AlertResult}."""
    if _installed is not None:
        return await _installed.send_alert(message, severity, context, channels)
    async with AlertDispatcher() as dispatcher:
        return await dispatcher.send_alert(message, severity, context, channels)
