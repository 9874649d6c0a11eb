"""Alerts to Slack, PagerDuty (Events API v2), a JSON webhook and Alertmanager, from async
code.

    from amani_observability.alerts import send_alert, get_dispatcher

    results = await send_alert("Payments failing", "critical", context={"rate": "12%"})
    get_dispatcher().submit("Queue backing up", "warning")   # fire and forget
    await send_alert("Payments failing", "critical", channels=["alertmanager"], action="resolve")

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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, cast

import httpx

from .._losses import count_dropped
from .._redaction import redactor_for
from ..assets import runbook_url
from ..settings import ObservabilitySettings
from ._channels import (
    ACTIONS,
    SEVERITIES,
    Action,
    Alert,
    AlertChannel,
    AlertmanagerChannel,
    ChannelRequest,
    DigestChannel,
    PagerDutyChannel,
    Severity,
    SlackChannel,
    WebhookChannel,
)
from ._delivery import (
    OUTCOMES,
    AlertResult,
    Backoff,
    Outcome,
    Pacer,
    Throttle,
    alerts_sent_counter,
    deliver,
    first_accepted,
    hide_in_httpx_logs,
    new_client,
)
from ._queue import Backlog

__all__ = [
    "ACTIONS",
    "OUTCOMES",
    "SEND_ACTIONS",
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
# What send_alert() and submit() may do to an alert; acknowledging is PagerDuty's alone.
SEND_ACTIONS: tuple[str, ...] = ("trigger", "resolve")
# The runbook section an Alertmanager alert links to when its context names none.
SERVICE_ALERTS_RUNBOOK = ("monitoring_runbook.md", "alerts-raised-by-the-service")
# Sends each channel's queue worker runs at once: enough to hide a slow endpoint, few
# enough to keep a burst from opening a hundred connections. A paced channel sends one
# at a time: its messages go out one per pace interval anyway.
WORKERS = 2
# The same kind of delivery failure is logged at most once per this many seconds.
LOG_INTERVAL = 60.0
# Logged once at shutdown when deliveries were still pending at the deadline.
ALERTS_LOST = (
    "%d alert deliveries were still pending when the %g s shutdown wait "
    "(ALERT_SHUTDOWN_TIMEOUT_SECONDS) ended and are lost: %s"
)

_installed: AlertDispatcher | None = None
# What submit() queues on each channel: message, severity, context, time.time(), action.
_Queued = tuple[str, str, "dict[str, Any] | None", float, Action]


class AlertDispatcher:
    """Sends alerts to its channels over one shared `httpx.AsyncClient`.

    Built from `ObservabilitySettings` (SLACK_WEBHOOK_URL, PAGERDUTY_API_KEY,
    PAGERDUTY_EVENTS_URL, ALERT_WEBHOOK_URL, ALERTMANAGER_URL, ALERT_* limits). Extra
    `channels` join the shipped `slack`, `pagerduty`, `webhook` and `alertmanager` (a
    channel with the same name replaces one).
    `backoff`, `slack_pace_seconds` and `transport` exist so tests need not sleep;
    `drain_timeout` overrides ALERT_SHUTDOWN_TIMEOUT_SECONDS.
    """

    def __init__(
        self,
        settings: ObservabilitySettings | None = None,
        *,
        channels: Iterable[AlertChannel] = (),
        backoff: Backoff | None = None,
        slack_pace_seconds: float = 1.0,
        drain_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = settings if settings is not None else ObservabilitySettings()
        self._service = settings.service_name
        self._environment = settings.environment
        self._host = socket.gethostname()
        self._redactor = redactor_for(tuple(settings.redact_keys))
        self._timeout = settings.alert_timeout_seconds
        self._max_retries = settings.alert_max_retries
        self._backoff = backoff or Backoff()
        self._drain_timeout = (
            settings.alert_shutdown_timeout_seconds if drain_timeout is None else drain_timeout
        )
        self._max_retry_after = settings.alert_max_retry_after_seconds
        # When the shutdown drain must end (loop time); None while running normally.
        self._drain_deadline: float | None = None
        self._transport = transport
        self._channels: dict[str, AlertChannel] = {}
        shipped: tuple[AlertChannel, ...] = (
            SlackChannel(settings.slack_webhook_url, pace_seconds=slack_pace_seconds),
            PagerDutyChannel(settings.pagerduty_api_key, events_url=settings.pagerduty_events_url),
            WebhookChannel(settings.alert_webhook_url),
            AlertmanagerChannel(
                settings.alertmanager_url,
                ttl_seconds=settings.alertmanager_alert_ttl_seconds,
                runbook_url=runbook_url(*SERVICE_ALERTS_RUNBOOK),
            ),
        )
        for channel in (*shipped, *channels):
            self.add_channel(channel)
        hide_in_httpx_logs(
            *(
                secret.get_secret_value()
                for secret in (settings.slack_webhook_url, settings.alert_webhook_url)
                if secret is not None
            ),
            # An Alertmanager URL is a credential only when it carries user:password@.
            *(
                url.rstrip("/") + "/api/v2/alerts"
                for url in settings.alertmanager_url
                if "@" in url
            ),
        )
        self._counter = alerts_sent_counter()
        self._pacer = Pacer()
        self._client: httpx.AsyncClient | None = None
        self._client_lock = asyncio.Lock()
        self._warm_up: asyncio.Task[httpx.AsyncClient] | None = None
        self._throttle = Throttle(settings.alert_throttle_seconds)
        self._last_logged: dict[tuple[str, str], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue_size = settings.alert_queue_size
        # One backlog per channel, made on its first queued alert.
        self._backlogs: dict[str, Backlog[_Queued]] = {}
        self._accepting = True
        self._closed = False
        self.dropped = 0  # alerts submit() refused (queue full, shut down)
        self.lost = 0  # deliveries (an alert to one channel) pending at the shutdown deadline

    def __repr__(self) -> str:
        queued = sum(len(backlog) for backlog in self._backlogs.values())
        return (
            f"AlertDispatcher(channels={list(self._channels)}, queued={queued}, "
            f"dropped={self.dropped}, lost={self.lost}, closed={self._closed})"
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
        *,
        action: str = "trigger",
    ) -> dict[str, AlertResult]:
        """Send to every channel at once; each result arrives within its own deadline.

        `action="resolve"` ends the alert with the same message and severity (Alertmanager
        matches it by its labels, PagerDuty by its dedup key)."""
        names = self._channel_names(channels)
        alert = self._alert(message, severity, context, action=_send_action(action))
        return await self._send_to(names, alert)

    def submit(
        self,
        message: str,
        severity: str,
        context: Mapping[str, Any] | None = None,
        channels: Iterable[str] | str = DEFAULT_CHANNELS,
        *,
        action: str = "trigger",
    ) -> bool:
        """Queue an alert and return at once (False: dropped, queue full or shut down).

        Callable from the event loop or, once the dispatcher has run on a loop, from
        other threads (sync endpoints in a thread pool)."""
        _check_severity(severity)
        checked_action = _send_action(action)
        names = self._channel_names(channels)
        if not self._accepting:
            return self._drop(names, "the dispatcher is shut down")
        # Only what must be captured now; the worker builds the alert.
        item = (
            str(message), severity, dict(context) if context else None, time.time(),
            checked_action,
        )  # fmt: skip
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and self._loop in (None, running):
            self._start_worker(running)
            return self._enqueue(names, item)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._enqueue, names, item)
            except RuntimeError:  # that loop is closed
                return self._drop(names, "its event loop is closed")
            return True
        return self._drop(names, "submit() needs a running event loop")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Install as `get_dispatcher()`; instrument() calls this at lifespan start-up."""
        global _installed
        if self._closed:  # the app's lifespan runs again (tests do that): start afresh
            self._backlogs = {}
            self._client = self._warm_up = self._loop = self._drain_deadline = None
            self._accepting, self._closed = True, False
        _installed = self
        # Started outside a loop (instrument() on a serving app): the worker starts on the
        # first submit() instead.
        with contextlib.suppress(RuntimeError):
            self._start_worker(asyncio.get_running_loop())

    async def aclose(self, *, timeout: float | None = None) -> None:
        """Stop accepting, send what is queued (waiting at most `timeout` seconds, default
        ALERT_SHUTDOWN_TIMEOUT_SECONDS), then close the HTTP client. Each channel drains
        on its own; Slack groups its backlog into digests when its pacing could not send
        it in time. What is still pending at the deadline is lost: counted as
        `alerts_sent_total{outcome="lost"}` and logged once."""
        global _installed
        if self._closed:
            return
        self._accepting = False
        if _installed is self:
            _installed = None
        wait = self._drain_timeout if timeout is None else timeout
        self._drain_deadline = asyncio.get_running_loop().time() + wait
        names = list(self._backlogs)
        left = await asyncio.gather(*(self._backlogs[name].drain(wait) for name in names))
        lost = {name: count for name, count in zip(names, left, strict=True) if count}
        if lost:
            for name, count in lost.items():
                self._counter.labels(name, "lost").inc(count)
            self.lost += sum(lost.values())
            count_dropped("alerts", "lost", sum(lost.values()))
            by_channel = ", ".join(f"{name} {count}" for name, count in lost.items())
            logger.error(ALERTS_LOST, sum(lost.values()), wait, by_channel)
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
            # A redacted copy: no secret leaves in an alert, and the caller may change its
            # dict while the alert waits in the queue.
            context=self._redactor.data(context) if context else {},
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
        return (await self._send_batch(name, [alert]))[0]

    async def _send_batch(self, name: str, alerts: Sequence[Alert]) -> list[AlertResult]:
        """Send `alerts` to channel `name`: one alone, or several as one digest message.
        Returns one result per alert and counts each."""
        results: list[AlertResult | None] = [None] * len(alerts)
        claims: list[tuple[int, tuple[str, ...], float]] = []
        for index, alert in enumerate(alerts):
            if self._closed:
                results[index] = AlertResult(
                    name, False, "failed", None, 0, "the alert dispatcher is closed"
                )
                continue
            key: tuple[str, ...] = (
                name, alert.severity, alert.action, alert.dedup_key or "", alert.message
            )  # fmt: skip
            claim = self._throttle.claim(key)
            if claim is None:
                results[index] = AlertResult(
                    name, False, "throttled", None, 0, "sent recently; throttled"
                )
            else:
                claims.append((index, key, claim))
        if claims:
            try:
                result = await self._deliver(name, [alerts[index] for index, _, _ in claims])
            except Exception as exc:  # a custom channel's bug must not reach the caller's path
                result = AlertResult(
                    name, False, "failed", None, 0, f"channel raised {type(exc).__name__}"
                )
            for index, claimed, claim in claims:
                results[index] = result
                if not result.ok:
                    self._throttle.release(claimed, claim)  # not delivered: a later try may go
        done = [result for result in results if result is not None]
        for result in done:
            self._record(result)
        return done

    async def _deliver(self, name: str, alerts: Sequence[Alert]) -> AlertResult:
        channel = self._channels[name]
        if len(alerts) == 1:
            request = channel.request(alerts[0])
        else:
            assert isinstance(channel, DigestChannel)  # only such channels are batched
            request = channel.digest(alerts)
        if request is None or (not isinstance(request, ChannelRequest) and not request):
            return AlertResult(name, False, "not_configured", None, 0, f"{name} is not configured")
        client = await self._http()
        if isinstance(request, ChannelRequest):
            return await self._post(client, name, request)
        # One POST per receiver, at once, each with its own retries and deadline.
        posts = await asyncio.gather(*(self._post(client, name, each) for each in request))
        return first_accepted(name, posts)

    async def _post(
        self, client: httpx.AsyncClient, name: str, request: ChannelRequest
    ) -> AlertResult:
        return await deliver(
            client,
            name,
            request,
            timeout=self._timeout,
            max_retries=self._max_retries,
            backoff=self._backoff,
            pacer=self._pacer,
            max_retry_after=self._max_retry_after,
        )

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
        if self._loop is None and self._accepting:
            self._loop = loop
            for backlog in self._backlogs.values():
                backlog.start(loop)
            # Build the HTTP client now, so the first alert does not wait for it.
            self._warm_up = loop.create_task(self._http())

    def _backlog(self, name: str) -> Backlog[_Queued]:
        backlog = self._backlogs.get(name)
        if backlog is None:
            channel = self._channels[name]

            async def send(items: list[_Queued]) -> None:
                alerts = [self._alert(m, s, c, action=a, timestamp=t) for m, s, c, t, a in items]
                await self._send_batch(name, alerts)

            if isinstance(channel, DigestChannel) and channel.pace_seconds > 0:
                backlog = Backlog(self._queue_size, 1, send, self._digest_size(channel))
            else:
                backlog = Backlog(self._queue_size, WORKERS, send)
            self._backlogs[name] = backlog
            if self._loop is not None:
                backlog.start(self._loop)
        return backlog

    def _digest_size(self, channel: DigestChannel) -> Callable[[Callable[[], int]], Awaitable[int]]:
        """How many pending alerts the channel's next message carries: it waits for its
        pace slot, then takes one, or as many as it may group when sending them one by
        one would outlast the time left (the shutdown deadline, or an alert's timeout)."""

        async def take(queued: Callable[[], int]) -> int:
            loop = asyncio.get_running_loop()
            pace_key = channel.pace_key
            if pace_key is not None:
                wait = self._pacer.wait_for_slot(pace_key, channel.pace_seconds, loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
            pending = queued()
            deadline = self._drain_deadline
            time_left = self._timeout if deadline is None else deadline - loop.time()
            # One slot spare: a 429 from the receiver costs a retry.
            if pending > 1 and (pending + 1) * channel.pace_seconds > time_left:
                return min(pending, channel.digest_limit)
            return 1

        return take

    def _enqueue(self, names: tuple[str, ...], item: _Queued) -> bool:
        if not self._accepting:
            return self._drop(names, "the dispatcher is shut down")
        full = tuple(name for name in names if not self._backlog(name).put(item))
        if full:
            return self._drop(full, f"the queue is full ({self._queue_size} alerts)")
        return True

    def _drop(self, names: tuple[str, ...], reason: str) -> bool:
        self.dropped += 1
        for name in names:
            self._counter.labels(name, "dropped").inc()
        count_dropped("alerts", "dropped", len(names))
        self._log_rate_limited(("*", "dropped"), "alert dropped: %s", reason)
        return False

    async def _send_to(self, names: tuple[str, ...], alert: Alert) -> dict[str, AlertResult]:
        if len(names) == 1:  # no task to create: the common case stays cheap
            return {names[0]: await self._send_one(names[0], alert)}
        results = await asyncio.gather(*(self._send_one(name, alert) for name in names))
        return dict(zip(names, results, strict=True))


def _or(choices: Iterable[str]) -> str:
    return ", ".join(choices)


def _send_action(action: str) -> Action:
    if action not in SEND_ACTIONS:
        raise ValueError(f"unknown alert action {action!r}; choose one of {_or(SEND_ACTIONS)}")
    return cast(Action, action)


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
    *,
    action: str = "trigger",
) -> dict[str, AlertResult]:
    """Send to several channels at once; returns {channel: AlertResult}.

    `action="resolve"` ends an alert sent earlier with the same message and severity."""
    if _installed is not None:
        return await _installed.send_alert(message, severity, context, channels, action=action)
    async with AlertDispatcher() as dispatcher:
        return await dispatcher.send_alert(message, severity, context, channels, action=action)
