"""The event-loop monitor's own cost per second of wall time.

    python -m benchmarks.loop_monitor [--rounds 5] [--seconds 2]

An idle asyncio loop runs for `--seconds` three ways, each round in a shuffled order:
without the monitor, with the lag callback alone (every millisecond), and with the
callback and the stall watchdog (waking every millisecond). The process's CPU time (all
threads) of each run, minus the run without the monitor, divided by the beats or
wake-ups it made, is the cost of one; at the defaults (a beat every 0.25 s, a watchdog
wake-up every 0.125 s) the cost per second of wall time is 4 beats and 8 wake-ups.
Every figure is the 20th percentile of the rounds. Target: at most 0.1% of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from amani_observability._loop_monitor import LoopMonitor
from amani_observability.metrics import EVENT_LOOP_LAG_BUCKETS
from benchmarks.harness import low_quantile, publish

RESULTS = Path(__file__).resolve().parent / "results"
# Microseconds of CPU per second of wall time: 0.1% of one core.
TARGET_US_PER_SECOND = 1000.0
FAST_INTERVAL = 0.001
# The watchdog wakes every stall_seconds / 4: one millisecond.
FAST_STALL = 0.004
DEFAULT_BEATS_PER_SECOND = 1 / 0.25
DEFAULT_WAKEUPS_PER_SECOND = 1 / (0.5 / 4)


def run(kind: str, seconds: float) -> tuple[float, float]:
    """(CPU seconds, beats) of an idle loop running `seconds` with this much monitor."""
    registry = CollectorRegistry()
    lag = Histogram("lag_seconds", "Lag.", buckets=EVENT_LOOP_LAG_BUCKETS, registry=registry)
    stalls = Counter("stalls", "Stalls.", registry=registry)
    monitor = LoopMonitor(
        FAST_INTERVAL,
        FAST_STALL if kind == "callback and watchdog" else 0.0,
        observe_lag=lag.observe,
        count_stall=stalls.inc,
    )

    async def idle() -> None:
        if kind != "none":
            monitor.start()
        await asyncio.sleep(seconds)
        await monitor.stop()

    started = time.process_time()
    asyncio.run(idle())
    cpu = time.process_time() - started
    beats = registry.get_sample_value("lag_seconds_count") or 0.0
    return cpu, beats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "loop_monitor.json")
    args = parser.parse_args(argv)
    # A millisecond threshold reports every scheduling hiccup of a busy machine: not ours.
    logging.getLogger("amani_observability.loop").setLevel(logging.ERROR)

    kinds = ["none", "callback", "callback and watchdog"]
    per_beat: list[float] = []
    per_wakeup: list[float] = []
    rng = random.Random(1234)
    for _ in range(args.rounds):
        order = list(kinds)
        rng.shuffle(order)
        measured = {kind: run(kind, args.seconds) for kind in order}
        base = measured["none"][0]
        cpu, beats = measured["callback"]
        per_beat.append((cpu - base) / beats)
        both_cpu, both_beats = measured["callback and watchdog"]
        wakeups = args.seconds / (FAST_STALL / 4)
        per_wakeup.append((both_cpu - base - both_beats * per_beat[-1]) / wakeups)
    beat_us = max(low_quantile(per_beat), 0.0) * 1e6
    wakeup_us = max(low_quantile(per_wakeup), 0.0) * 1e6
    per_second_us = DEFAULT_BEATS_PER_SECOND * beat_us + DEFAULT_WAKEUPS_PER_SECOND * wakeup_us
    print(f"one beat (callback, histogram, reschedule)  {beat_us:8.2f} us", file=sys.stderr)
    print(f"one watchdog wake-up                        {wakeup_us:8.2f} us", file=sys.stderr)
    print(
        f"per second of wall time at the defaults     {per_second_us:8.2f} us "
        f"({per_second_us / 1e4:.4f}% of one core)",
        file=sys.stderr,
    )
    result = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "us_per_beat": round(beat_us, 3),
        "us_per_watchdog_wakeup": round(wakeup_us, 3),
        "us_per_second_at_defaults": round(per_second_us, 3),
        "target_us_per_second": TARGET_US_PER_SECOND,
        "meets_target": per_second_us <= TARGET_US_PER_SECOND,
    }
    return publish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
