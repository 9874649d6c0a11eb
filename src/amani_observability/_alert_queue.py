"""The bounded backlog behind `AlertDispatcher.submit()`, and the worker that empties it.

`put()` is what runs on the caller's path, so it is a length check and a deque append
(about a microsecond); building the alert and sending it happen in the worker task,
which runs at most `workers` sends at once so a burst never floods the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Backlog(Generic[T]):
    def __init__(self, size: int, workers: int, send: Callable[[T], Awaitable[object]]) -> None:
        self.size = size
        self._workers = workers
        self._send = send
        self._items: deque[T] = deque()
        self._unfinished = 0
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return self._unfinished

    @property
    def started(self) -> bool:
        return self._worker is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        if not self._unfinished:
            self._idle.set()
        self._worker = loop.create_task(self._work())

    def put(self, item: T) -> bool:
        """Queue `item`; False when the backlog is full. Call from the worker's loop only."""
        if self._unfinished >= self.size:
            return False
        self._items.append(item)
        self._unfinished += 1
        if self._idle is not None:
            self._idle.clear()
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for every queued item to be sent, then stop the
        worker. Returns how many items were given up."""
        if self._worker is None or self._idle is None:
            return self._unfinished
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        left = self._unfinished
        tasks = [self._worker, *self._in_flight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._items.clear()
        return left

    async def _work(self) -> None:
        assert self._wakeup is not None
        slots = asyncio.Semaphore(self._workers)
        while True:
            while not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
            await slots.acquire()
            task = asyncio.create_task(self._send_one(self._items.popleft(), slots))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send_one(self, item: T, slots: asyncio.Semaphore) -> None:
        try:
            await self._send(item)
        finally:
            slots.release()
            self._unfinished -= 1
            if not self._unfinished and self._idle is not None:
                self._idle.set()
