"""Sending one channel's POST: retries with jittered backoff, Retry-After, pacing, deadline.

Nothing here raises for a delivery problem: every path ends in an `AlertResult`.
Error texts are built from our own words, the status code and the receiver's (scrubbed)
answer, never from the URL or the request body, so they hold no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
from prometheus_client import Counter

from .._own_traffic import own_traffic
from .._redaction import mask_userinfo
from .._registry import get_or_create
from .._version import __version__
from ._channels import ChannelRequest

Outcome = Literal["delivered", "failed", "throttled", "not_configured", "rejected"]
OUTCOMES: tuple[str, ...] = ("delivered", "failed", "throttled", "not_configured", "rejected")
# Statuses worth another try: request timeout, rate limited, server errors.
_RETRYABLE = frozenset({408, 429})
_ERROR_BODY_LIMIT = 200


@dataclass(frozen=True)
class AlertResult:
    """What happened to an alert on one channel. Never holds a secret."""

    channel: str
    ok: bool
    outcome: Outcome
    status: int | None = None
    attempts: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: attempt n waits between d/2 and d,
    d = min(max_seconds, base_seconds * 2**(n-1)). Jitter keeps many workers that
    failed together from retrying together."""

    base_seconds: float = 0.5
    max_seconds: float = 8.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


class Pacer:
    """Spaces requests sharing a pace key (Slack: about one message per second per webhook)."""

    def __init__(self) -> None:
        self._next_free: dict[str, float] = {}

    def wait_for_slot(self, key: str, interval: float, now: float) -> float:
        return max(0.0, self._next_free.get(key, 0.0) - now) if interval > 0 else 0.0

    def take_slot(self, key: str, interval: float, now: float) -> None:
        self._next_free[key] = max(now, self._next_free.get(key, 0.0)) + interval

    def hold(self, key: str, until: float) -> None:
        # After a 429 every sender to that webhook waits out Retry-After, not just this one.
        self._next_free[key] = max(until, self._next_free.get(key, 0.0))


class Throttle:
    """Remembers when each alert key was last sent; a key sent within `seconds` is not
    sent again. The mark is taken before sending, so a burst of one alert goes out once."""

    # Entries kept before expired ones are swept.
    SWEEP_AT = 4096

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[tuple[str, ...], float] = {}

    def claim(self, key: tuple[str, ...]) -> float | None:
        """The claim's time, or None when `key` was sent too recently."""
        now = time.monotonic()
        if self.seconds <= 0:
            return now
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return None
        if len(self._last) >= self.SWEEP_AT:
            horizon = now - self.seconds
            self._last = {k: t for k, t in self._last.items() if t > horizon}
        self._last[key] = now
        return now

    def release(self, key: tuple[str, ...], claim: float) -> None:
        if self._last.get(key) == claim:
            del self._last[key]


def new_client(*, transport: httpx.AsyncBaseTransport | None, timeout: float) -> httpx.AsyncClient:
    """The dispatcher's HTTP client. Call it in a thread: it loads the CA bundle."""
    # httpcore imports anyio's asyncio backend on its first request (~0.1 s): do it here,
    # off the event loop, rather than in the middle of the first burst of alerts.
    for module in ("anyio._backends._asyncio", "anyio.streams.tls"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        headers={"user-agent": f"amani-observability/{__version__}"},
    )


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _answer(response: httpx.Response, request: ChannelRequest) -> str:
    body = _scrub(response.text.strip(), (request.url, *request.secrets))
    if len(body) > _ERROR_BODY_LIMIT:
        body = body[:_ERROR_BODY_LIMIT] + "…"
    return f"HTTP {response.status_code}" + (f": {body}" if body else "")


async def deliver(
    client: httpx.AsyncClient,
    channel: str,
    request: ChannelRequest,
    *,
    timeout: float,
    max_retries: int,
    backoff: Backoff,
    pacer: Pacer,
    max_retry_after: float,
) -> AlertResult:
    """POST `request`, retrying up to `max_retries` times, all within `timeout` seconds.
    A receiver's Retry-After is honoured up to `max_retry_after` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    status: int | None = None
    while True:
        pace_key = request.pace_key
        if pace_key is not None:
            now = loop.time()
            wait = pacer.wait_for_slot(pace_key, request.pace_seconds, now)
            if now + wait >= deadline:
                return AlertResult(
                    channel, False, "failed", status, attempts,
                    "rate limit pacing left no time before the deadline",
                )  # fmt: skip
            pacer.take_slot(pace_key, request.pace_seconds, now)
            if wait > 0:
                await asyncio.sleep(wait)
        remaining = deadline - loop.time()
        if remaining <= 0:
            return AlertResult(
                channel, False, "failed", status, attempts, f"the {timeout:g} s deadline passed"
            )
        attempts += 1
        retry_after: float | None = None
        try:
            # The URL is a credential: no span or breadcrumb of the service may show it.
            with own_traffic():
                response = await asyncio.wait_for(
                    client.post(
                        request.url,
                        content=request.content,
                        headers=dict(request.headers),
                        timeout=httpx.Timeout(remaining),
                    ),
                    remaining,
                )
        except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
            error = f"no answer within the {timeout:g} s deadline ({type(exc).__name__})"
            if loop.time() >= deadline - 0.001:
                return AlertResult(channel, False, "failed", status, attempts, error)
        except httpx.TransportError as exc:
            # str(exc) may carry the URL on some errors: say what happened in our own words.
            error = f"connection failed ({type(exc).__name__})"
        else:
            status = response.status_code
            if 200 <= status < 300:
                return AlertResult(channel, True, "delivered", status, attempts)
            error = _answer(response, request)
            if status not in _RETRYABLE and status < 500:
                # Slack 400/403/404/410, PagerDuty 400: the same request will fail again.
                return AlertResult(channel, False, "rejected", status, attempts, error)
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if retry_after is not None:
                # `Retry-After: 1e9` must not silence the channel until the next restart.
                retry_after = min(retry_after, max_retry_after)
            if retry_after is not None and pace_key is not None:
                pacer.hold(pace_key, loop.time() + retry_after)
        if attempts > max_retries:
            return AlertResult(
                channel, False, "failed", status, attempts, f"{error}; gave up after retries"
            )
        wait = retry_after if retry_after is not None else backoff.delay(attempts)
        if loop.time() + wait >= deadline:
            return AlertResult(
                channel, False, "failed", status, attempts,
                f"{error}; the next try ({wait:.1f} s) would pass the deadline",
            )  # fmt: skip
        await asyncio.sleep(wait)


def first_accepted(channel: str, results: Sequence[AlertResult]) -> AlertResult:
    """One result for a channel that POSTed to several receivers (the instances of an
    Alertmanager cluster): delivered when any of them accepted the alert."""
    if len(results) == 1:
        return results[0]
    count = len(results)
    attempts = sum(result.attempts for result in results)
    missed = "; ".join(
        f"receiver {position} of {count}: {result.error}"
        for position, result in enumerate(results, start=1)
        if not result.ok
    )
    accepted = [result for result in results if result.ok]
    if accepted:
        return AlertResult(channel, True, "delivered", accepted[0].status, attempts, missed or None)
    outcome: Outcome = (
        "rejected" if all(result.outcome == "rejected" for result in results) else "failed"
    )
    return AlertResult(channel, False, outcome, results[0].status, attempts, missed)


def alerts_sent_counter() -> Counter:
    """`alerts_sent_total{channel, outcome}`, get-or-create in the default registry, so a
    second dispatcher (or a re-imported module in tests) never hits "Duplicated timeseries"."""
    return get_or_create(
        Counter,
        "alerts_sent_total",
        "Alerts handled by the dispatcher, by channel and outcome "
        "(delivered, failed, throttled, not_configured, rejected, dropped, lost).",
        labelnames=["channel", "outcome"],
    )


class _RedactSecretURLs(logging.Filter):
    """httpx logs every request URL at INFO; a webhook URL is a credential, so hide it,
    and userinfo in any URL."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            # Webhook URLs whole; any other URL's userinfo (PAGERDUTY_EVENTS_URL's, say).
            record.args = tuple(
                (_redacted(a) if str(a) in self.urls else mask_userinfo(str(a)))
                if isinstance(a, (str, httpx.URL))
                else a
                for a in args
            )
        return True


def _redacted(url: Any) -> str:
    parsed = httpx.URL(str(url))
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}/***"


url_filter = _RedactSecretURLs()


def hide_in_httpx_logs(*urls: str) -> None:
    if url_filter not in logging.getLogger("httpx").filters:
        logging.getLogger("httpx").addFilter(url_filter)
    for url in urls:
        url_filter.urls.update({url, str(httpx.URL(url))})
