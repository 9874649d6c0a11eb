"""Drive the running demo with a mix of traffic, so every dashboard panel moves.

    make demo                      # in one terminal
    make load                      # in another: 60 s of traffic against 127.0.0.1:8000
    python -m examples.load --base-url http://127.0.0.1:8000 --duration 300 --concurrency 8

The mix: health checks, user registrations, escrow transactions (created and read back),
KYC submissions, unknown transactions (404), a slow route (0.1-2.5 s) and a failing
route (500). A progress bar runs on stderr; a summary per route and status follows.
Every loop is bounded by --duration, and every request by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import httpx

# An action sends one or more requests and returns (route, status) for each.
Action = Callable[[httpx.AsyncClient, random.Random], Awaitable[list[tuple[str, int]]]]
BAR_WIDTH = 30


async def health(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    response = await client.get("/health")
    return [("GET /health", response.status_code)]


async def register(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    email = f"user{rng.randrange(10**9)}@example.com"
    response = await client.post("/api/v1/users/register", json={"email": email})
    return [("POST /api/v1/users/register", response.status_code)]


async def escrow(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    body = {"type": rng.choice(["hold", "release", "refund"]), "amount": rng.randint(1, 500)}
    response = await client.post("/api/v1/escrow/transactions", json=body)
    sent = [("POST /api/v1/escrow/transactions", response.status_code)]
    if response.status_code == 201 and rng.random() < 0.5:
        transaction = response.json()["transaction_id"]
        response = await client.get(f"/api/v1/escrow/transactions/{transaction}")
        sent.append(("GET /api/v1/escrow/transactions/{transaction_id}", response.status_code))
    return sent


async def missing(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    response = await client.get(f"/api/v1/escrow/transactions/missing-{rng.randrange(1000)}")
    return [("GET /api/v1/escrow/transactions/{transaction_id}", response.status_code)]


async def kyc(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    body = {
        "user_id": f"u{rng.randrange(1000)}",
        "document_type": rng.choice(["passport", "national_id", "drivers_license"]),
    }
    response = await client.post("/api/v1/kyc/submissions", json=body)
    return [("POST /api/v1/kyc/submissions", response.status_code)]


async def slow(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    # Mostly a little slow, sometimes past the 2 s the HighResponseTime alert watches.
    seconds = round(rng.choice([0.1, 0.3, 0.6, 1.2, 2.5]), 1)
    response = await client.get("/api/v1/slow", params={"seconds": seconds})
    return [("GET /api/v1/slow", response.status_code)]


async def fail(client: httpx.AsyncClient, rng: random.Random) -> list[tuple[str, int]]:
    # uvicorn closes the connection after an unhandled exception: ask for that up front,
    # so the pool does not reuse a connection the server is about to drop.
    response = await client.get("/api/v1/fail", headers={"Connection": "close"})
    return [("GET /api/v1/fail", response.status_code)]


# (action, weight): about 5% failures, 10% slow, the rest quick business traffic.
MIX: list[tuple[Action, int]] = [
    (health, 10),
    (register, 15),
    (escrow, 30),
    (kyc, 15),
    (missing, 5),
    (fail, 5),
    (slow, 10),  # last, so the first client's opening round reaches every other route first
]


class Progress:
    """A one-line progress bar on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: TextIO, duration: float) -> None:
        self.stream = stream
        self.duration = duration
        self.tty = stream.isatty()
        self.last_line = 0.0

    def show(self, elapsed: float, counts: Counter[tuple[str, int]], errors: int) -> None:
        done = min(elapsed / self.duration, 1.0) if self.duration else 1.0
        filled = int(done * BAR_WIDTH)
        total = sum(counts.values())
        failed = sum(n for (_, status), n in counts.items() if status >= 500)
        line = (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {elapsed:5.1f}/{self.duration:g} s"
            f"  requests {total}  5xx {failed}  connection errors {errors}"
        )
        if self.tty:
            self.stream.write("\r" + line)
        elif done >= 1.0 or time.monotonic() - self.last_line >= 5.0:
            self.stream.write(line + "\n")
            self.last_line = time.monotonic()
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def run(
    base_url: str,
    *,
    duration: float,
    concurrency: int,
    timeout: float,
    seed: int | None,
    progress: Progress | None,
) -> tuple[Counter[tuple[str, int]], int]:
    """Send the mix for `duration` seconds; return (route, status) counts and connection errors."""
    counts: Counter[tuple[str, int]] = Counter()
    errors = 0
    actions = [action for action, _ in MIX]
    weights = [weight for _, weight in MIX]
    started = time.monotonic()
    deadline = started + duration

    async def worker(rng: random.Random, first: list[Action]) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            action = first.pop(0) if first else rng.choices(actions, weights)[0]
            try:
                counts.update(await action(client, rng))
            except httpx.TransportError:
                errors += 1
                await asyncio.sleep(0.2)  # the service is down or restarting: don't spin

    async def report() -> None:
        while time.monotonic() < deadline:
            if progress is not None:
                progress.show(time.monotonic() - started, counts, errors)
            await asyncio.sleep(0.2)

    master = random.Random(seed)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        # The first client starts with one of each action, so that every panel has a
        # series within seconds; then every client draws from the weighted mix.
        tasks = [
            asyncio.create_task(
                worker(random.Random(master.random()), list(actions) if i == 0 else [])
            )
            for i in range(concurrency)
        ]
        tasks.append(asyncio.create_task(report()))
        # A request started just before the deadline may take up to `timeout` more.
        await asyncio.wait_for(asyncio.gather(*tasks), duration + timeout + 5)
    if progress is not None:
        progress.show(time.monotonic() - started, counts, errors)
        progress.close()
    return counts, errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel clients (default 4)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request (default 10 s)")
    parser.add_argument("--seed", type=int, default=None, help="repeatable traffic")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.timeout <= 0:
        parser.error("--duration and --timeout must be positive, --concurrency at least 1")

    sys.stderr.write(
        f"driving {args.base_url} for {args.duration:g} s with {args.concurrency} clients\n"
    )
    counts, errors = asyncio.run(
        run(
            args.base_url,
            duration=args.duration,
            concurrency=args.concurrency,
            timeout=args.timeout,
            seed=args.seed,
            progress=Progress(sys.stderr, args.duration),
        )
    )
    sys.stdout.write(f"{sum(counts.values())} responses, {errors} connection errors\n")
    for (route, status), count in sorted(counts.items()):
        sys.stdout.write(f"  {route} {status}: {count}\n")
    if not counts:
        sys.stderr.write(f"no response from {args.base_url}: is the demo running (make demo)?\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
