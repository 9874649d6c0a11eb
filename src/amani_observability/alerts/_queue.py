"""One channel's bounded backlog behind `AlertDispatcher.submit()`, and the worker that
empties it.

`put()` is what runs on the caller's path, so it is a length check and a deque append
(about a microsecond); building the alert and sending it happen in the worker task,
which runs at most `workers` sends at once so a burst never floods the event loop. Each
channel has its own backlog, so a slow or paced channel never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Backlog(Generic[T]):
    """`send` gets a list of items: one, or as many as `take(queued)` asks for, `queued`
    telling how many wait (a channel that groups alerts into one message waits for its
    turn there, then takes several)."""

    def __init__(
        self,
        size: int,
        workers: int,
        send: Callable[[list[T]], Awaitable[object]],
        take: Callable[[Callable[[], int]], Awaitable[int]] | None = None,
    ) -> None:
        self.size = size
        self._workers = workers
        self._send = send
        self._take = take
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
        worker. Returns how many items were given up (queued or still being sent)."""
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
        self._unfinished = 0
        return left

    async def _work(self) -> None:
        assert self._wakeup is not None
        slots = asyncio.Semaphore(self._workers)
        while True:
            while not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
            await slots.acquire()
            count = 1 if self._take is None else await self._take(self._items.__len__)
            batch = [self._items.popleft() for _ in range(max(1, min(count, len(self._items))))]
            task = asyncio.create_task(self._send_batch(batch, slots))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send_batch(self, batch: list[T], slots: asyncio.Semaphore) -> None:
        try:
            await self._send(batch)
        finally:
            slots.release()
            self._unfinished -= len(batch)
            if not self._unfinished and self._idle is not None:
                self._idle.set()
