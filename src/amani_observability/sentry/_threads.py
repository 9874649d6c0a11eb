"""sentry-sdk's threading integration, without its scope forks where a context is carried.

The SDK's ThreadingIntegration wraps `ThreadPoolExecutor.submit` so that the submitted
function runs with forks of the caller's two scopes: three scope copies and two context
managers per call. `asyncio.to_thread()`, and `run_in_executor(None, ctx.run, ...)`,
submit `Context.run` of a copied context instead, and that context already holds the
caller's scopes: the function runs with those very scopes, and the forks, set around
`Context.run` in the worker thread's own context, are never seen, and cost throughput
(docs/performance.md).

`ThreadingIntegration` here is the SDK's, under the same identifier, with one change:
`submit` of a callable that runs in a carried context goes straight to the executor.
Everything else (plain `submit`, `Thread.start`, the capture of exceptions escaping a
thread) is the SDK's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import Context
from functools import partial
from typing import Any

from sentry_sdk.integrations.threading import ThreadingIntegration as SDKThreadingIntegration


def runs_in_a_carried_context(fn: Callable[..., Any]) -> bool:
    """Whether `fn` is `Context.run` of some context, bare or in a functools.partial."""
    target = fn.func if type(fn) is partial else fn
    return type(getattr(target, "__self__", None)) is Context


class ThreadingIntegration(SDKThreadingIntegration):
    """The SDK's threading integration, minus the scope forks a carried context makes moot."""

    @staticmethod
    def setup_once() -> None:
        plain_submit = ThreadPoolExecutor.submit
        SDKThreadingIntegration.setup_once()
        forking_submit = ThreadPoolExecutor.submit
        if forking_submit is plain_submit:
            return  # a sentry-sdk that does not fork scopes at submit (older 2.x releases)

        def submit(
            self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
        ) -> Future[Any]:
            if runs_in_a_carried_context(fn):
                return plain_submit(self, fn, *args, **kwargs)
            return forking_submit(self, fn, *args, **kwargs)

        submit.__wrapped__ = forking_submit  # type: ignore[attr-defined]
        ThreadPoolExecutor.submit = submit  # type: ignore[method-assign, assignment]


def wants_ours(options: dict[str, Any]) -> bool:
    """Whether init() options leave the threading integration to the defaults: no
    ThreadingIntegration of the service's own, not disabled, defaults not turned off."""
    if options.get("default_integrations") is False:
        return False
    for key in ("integrations", "disabled_integrations"):
        for each in options.get(key) or ():
            if getattr(each, "identifier", None) == SDKThreadingIntegration.identifier:
                return False
    return True
