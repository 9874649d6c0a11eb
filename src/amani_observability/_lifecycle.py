"""Start-up and shutdown of what the concerns build: the Lifecycle, and the ASGI lifespan
for apps that are not Starlette applications.

Start-up work (tracer provider, Sentry client, alert dispatcher) runs at lifespan start-up,
not at import or in instrument(), so fork-based servers get fresh exporters per worker;
shutdown flushes and closes them with a bounded wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._asgi import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("amani_observability")

# Seconds each shutdown hook may take before we stop waiting for it.
SHUTDOWN_TIMEOUT = 5.0


class Lifecycle:
    """Start-up and shutdown hooks the components register while instrument() runs."""

    def __init__(self) -> None:
        self.startup_hooks: list[Callable[[], None]] = []
        # Each hook with the seconds shutdown waits for it.
        self.shutdown_hooks: list[tuple[Callable[[], Awaitable[None]], float]] = []
        # Each names a fast path in use, for the start-up summary; asked after start-up.
        self.fast_paths: list[Callable[[], str]] = []
        self.started = False

    def on_startup(self, hook: Callable[[], None]) -> None:
        self.startup_hooks.append(hook)

    def on_shutdown(
        self, hook: Callable[[], Awaitable[None]], *, timeout: float = SHUTDOWN_TIMEOUT
    ) -> None:
        self.shutdown_hooks.append((hook, timeout))

    def report_fast_path(self, describe: Callable[[], str]) -> None:
        self.fast_paths.append(describe)

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for hook in self.startup_hooks:
            hook()

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        # Last started, first stopped.
        for hook, timeout in reversed(self.shutdown_hooks):
            try:
                await asyncio.wait_for(hook(), timeout)
            except Exception:
                # Shutdown goes on: one stuck exporter must not keep the others from flushing.
                logger.exception("observability shutdown hook %r failed", hook)


class LifespanMiddleware:
    """Runs the lifecycle hooks for ASGI apps that are not Starlette applications."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
        else:
            # Apart from __call__: run_lifespan's closures would make cells on every call.
            await run_lifespan(self.app, self.lifecycle, scope, receive, send)


async def run_lifespan(
    app: ASGIApp, lifecycle: Lifecycle, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run `app`'s lifespan with `lifecycle` started before its start-up and stopped after
    its shutdown; speak the protocol for the hooks where the app does not."""
    forwarded_startup = False

    async def receive_with_hooks() -> Message:
        nonlocal forwarded_startup
        message = await receive()
        if message["type"] == "lifespan.startup":
            lifecycle.start()
            forwarded_startup = True
        return message

    async def send_with_hooks(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await lifecycle.stop()
        await send(message)

    try:
        await app(scope, receive_with_hooks, send_with_hooks)
    except Exception:
        if forwarded_startup:
            raise
        # The app does not speak the lifespan protocol: speak it for our own hooks.
        await _serve_lifespan(receive, send, lifecycle)


async def _serve_lifespan(receive: Receive, send: Send, lifecycle: Lifecycle) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            lifecycle.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
