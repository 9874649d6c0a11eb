"""Test helpers that are not fixtures: an ASGI message recorder, a lifespan driver,
and a uvicorn process runner."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from typing_extensions import Self

ROOT = Path(__file__).resolve().parent.parent


class LifespanDriver:
    """Speak the ASGI lifespan protocol to an app, as a server would."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(self._from_app.get(), 10)
        assert message["type"] == "lifespan.startup.complete", message

    async def shutdown(self) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(self._from_app.get(), 15)
        assert message["type"] == "lifespan.shutdown.complete", message
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)


def http_scope(
    path: str = "/", *, method: str = "GET", headers: Any = (), **extra: Any
) -> dict[str, Any]:
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


async def call_asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> list[dict[str, Any]]:
    """Call an ASGI app once and return every message it sent."""
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


def response_headers(messages: list[dict[str, Any]]) -> dict[str, str]:
    start = next(m for m in messages if m["type"] in ("http.response.start", "websocket.accept"))
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}


class ServerProcess:
    """A real server process on loopback, its output kept in a file, started with a bounded
    wait for `ready_url` (any HTTP answer, or only `ready_status` when given) and stopped
    with a bounded wait."""

    def __init__(
        self,
        argv: list[str],
        *,
        log_path: Path,
        ready_url: str,
        ready_status: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self.ready_url = ready_url
        self.ready_status = ready_status
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"{self.argv[0]} exited early:\n{self.output()}")
            try:
                status = httpx.get(self.ready_url, timeout=1.0).status_code
            except httpx.TransportError:
                status = None
            if status is not None and self.ready_status in (None, status):
                return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"{self.argv[0]} was not ready within 30 s:\n{self.output()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class UvicornProcess(ServerProcess):
    """A real uvicorn serving `app_path` on a loopback port, its output kept in a file."""

    def __init__(
        self,
        app_path: str,
        port: int,
        *,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        log_path: Path,
    ) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        super().__init__(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app_path,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                *args,
            ],
            log_path=log_path,
            ready_url=self.base_url + "/health",
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            cwd=ROOT,
        )


class OTLPReceiver:
    """A real OTLP/gRPC trace receiver (TraceService from opentelemetry-proto) on a
    loopback port, keeping every export request and its metadata."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

                receiver.requests.append(request)
                receiver.metadata.append(dict(context.invocation_metadata()))
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OTLPReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(5)

    def resource_spans(self) -> list[Any]:
        return [rs for request in self.requests for rs in request.resource_spans]

    def spans(self) -> list[Any]:
        return [s for rs in self.resource_spans() for ss in rs.scope_spans for s in ss.spans]


def otlp_value(any_value: Any) -> Any:
    """The Python value inside an OTLP AnyValue."""
    return getattr(any_value, any_value.WhichOneof("value"))


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
