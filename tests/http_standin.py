"""A real HTTP/1.1 server on a loopback port standing in for Slack, PagerDuty or a webhook.

It runs its own event loop in a thread, so what the test's loop measures is the code
under test, not the server. Each path answers from a script of `Reply`s (then from the
default), and every request is recorded with its arrival time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    hang: bool = False  # never answer (until the server stops)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


class StandIn:
    """Start with `with StandIn() as server:`; `server.url("/slack")` is its address."""

    def __init__(self, default: Reply = Reply()) -> None:
        self.default = default
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._responders: dict[str, Callable[[Recorded], Reply]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._connections: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """The next requests to `path` get these replies, in order."""
        with self._lock:
            self._scripts[path].extend(replies)

    def respond(self, path: str, responder: Callable[[Recorded], Reply]) -> None:
        """Requests to `path` (once its script is used up) get `responder(request)`."""
        with self._lock:
            self._responders[path] = responder

    def received(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def __enter__(self) -> StandIn:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._exchange(reader, writer)
        except asyncio.CancelledError:
            pass  # the stand-in is stopping; start_server would log a cancelled handler
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: one connection, many requests
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and target.startswith("/__received?path="):
                # For StandInProcess: how many requests a path has received.
                count = len(self.received(target.partition("=")[2]))
                writer.write(_response(Reply(200, str(count).encode())))
                await writer.drain()
                continue
            with self._lock:
                recorded = Recorded(method, target, headers, body)
                self.requests.append(recorded)
                script = self._scripts[target]
                responder = self._responders.get(target)
                if script:
                    reply = script.popleft()
                elif responder is not None:
                    reply = responder(recorded)
                else:
                    reply = self.default
            if reply.hang:
                await asyncio.Event().wait()
            writer.write(_response(reply))
            await writer.drain()


def _response(reply: Reply) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers)
    head = (
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n"
        f"content-type: text/plain\r\ncontent-length: {len(reply.body)}\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + reply.body


class SlackRateLimit:
    """Answers like a Slack incoming webhook held to one message per `interval` seconds:
    200 within the limit, else 429 with `Retry-After` (what Slack does past about one
    message per second). `accepted` holds the requests answered 200."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.accepted: list[Recorded] = []
        self.limited = 0
        self._next_free = 0.0

    def __call__(self, request: Recorded) -> Reply:
        if request.at < self._next_free:
            self.limited += 1
            return Reply(429, b"rate_limited", (("retry-after", f"{self.interval:g}"),))
        self._next_free = request.at + self.interval
        self.accepted.append(request)
        return Reply(200)


class StandInProcess:
    """The same server in its own process: for load tests, where a server thread would
    compete with the code under test for the GIL and blur what the test measures."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return int(httpx.get(self.url(f"/__received?path={path}"), timeout=5).text)

    def __enter__(self) -> StandInProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.http_standin"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


if __name__ == "__main__":
    with StandIn() as server:
        print(server.port, flush=True)
        threading.Event().wait(600)  # the test terminates us long before
