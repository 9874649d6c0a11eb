"""`make bench`: run every benchmark group, print the table, write results JSON.

    python -m benchmarks.run [--rounds 60] [--processes 3] [--requests 200] [--only GROUP]

Each group runs in its own process (see harness.py), and in several of them: the rounds
are split over `--processes` passes, each pass running every group once, one after the
other. The same code measured in separate processes differs by more than one process's
own spread (an overhead of a few microseconds came out anywhere from -3 to +20 us here),
and a pass a few minutes later meets the machine in another state. So every figure in the
table is the median over the passes of that process's figure, each taken against the
bare baseline of its own process; the table puts the groups side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchmarks
from benchmarks.harness import BARE, BARE_CASE, Case, measure

RESULTS = Path(__file__).resolve().parent / "results"


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)):
        if module.startswith("cases_"):
            cases.extend(importlib.import_module(f"benchmarks.{module}").CASES)
    return cases


def run_group(group: str, rounds: int, requests: int) -> dict[str, float]:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        # One core for the whole group: no migrations between cores mid-measurement.
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
    cases = [BARE_CASE, *(c for c in all_cases() if c.group == group)]
    return asyncio.run(measure(cases, rounds=rounds, requests=requests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=60, help="rounds per case, all passes")
    parser.add_argument("--processes", type=int, default=3, help="passes, one process each")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--only", help="run one group, in this process, and print its JSON")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)

    if args.only:
        print(json.dumps(run_group(args.only, args.rounds, args.requests)))
        return 0

    cases = all_cases()
    groups = sorted({c.group for c in cases}, key=lambda g: (g != "main", g))
    passes = max(1, args.processes)
    rounds = max(1, args.rounds // passes)
    # group -> one {case: us per request} per pass
    measured: dict[str, list[dict[str, float]]] = {group: [] for group in groups}
    for number in range(1, passes + 1):
        for group in groups:
            print(f"pass {number}/{passes}: running group {group!r} ...", file=sys.stderr)
            measured[group].append(_run_process(group, rounds, args.requests))
    rows = aggregate({g: [c for c in cases if c.group == g] for g in groups}, measured)
    by_name = {(r["group"], r["configuration"]): r for r in rows}
    for row in rows:
        if row["peer"]:
            peer = next(r for (g, n), r in by_name.items() if n == row["peer"])
            row["ratio_to_peer"] = round(row["overhead_us"] / peer["overhead_us"], 3)
            # A row without a target is shown for information: it cannot miss.
            target = row["target"]
            row["meets_target"] = None if target is None else row["ratio_to_peer"] <= target
    _print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "rounds": rounds * passes,
                "processes": passes,
                "requests_per_round": args.requests,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.out}")
    missed = [r["configuration"] for r in rows if r.get("meets_target") is False]
    if missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


def aggregate(
    cases: dict[str, list[Case]], measured: dict[str, list[dict[str, float]]]
) -> list[dict[str, Any]]:
    """The table's rows: for each group's cases (bare first), the median over the passes
    of each process's microseconds, overhead against its own bare case, and x bare."""
    rows: list[dict[str, Any]] = []
    for group, group_cases in cases.items():
        runs = measured[group]
        for case in [BARE_CASE, *group_cases]:
            name = case.name
            overheads = [run[name] - run[BARE] for run in runs]
            rows.append(
                {
                    "group": group,
                    "configuration": name,
                    "us_per_request": round(statistics.median(run[name] for run in runs), 1),
                    "overhead_us": round(statistics.median(overheads), 1),
                    "x_bare": round(statistics.median(run[name] / run[BARE] for run in runs), 3),
                    "overhead_us_per_process": [round(value, 1) for value in overheads],
                    "peer": case.peer,
                    "target": case.target,
                }
            )
    return rows


def _run_process(group: str, rounds: int, requests: int) -> dict[str, float]:
    """One group in a fresh process: each case's microseconds per request."""
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", group,
         "--rounds", str(rounds), "--requests", str(requests)],
        capture_output=True, text=True,
    )  # fmt: skip
    if process.returncode != 0:
        # Show why the group failed instead of a bare CalledProcessError.
        sys.stderr.write(process.stderr)
        raise SystemExit(f"group {group!r} failed (exit status {process.returncode})")
    result: dict[str, float] = json.loads(process.stdout.strip().splitlines()[-1])
    return result


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'group':<14} {'configuration':<44} {'us/req':>8} {'overhead':>9} {'x bare':>7}  vs peer"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.get("ratio_to_peer") is not None:
            if r["target"] is None:
                versus = f"{r['ratio_to_peer']:.3f}x of {r['peer']} (for information)"
            else:
                mark = "ok" if r["meets_target"] else "MISSED"
                versus = (
                    f"{r['ratio_to_peer']:.3f}x of {r['peer']} (target <= {r['target']}) {mark}"
                )
        else:
            versus = ""
        print(
            f"{r['group']:<14} {r['configuration']:<44} {r['us_per_request']:>8.1f} "
            f"{r['overhead_us']:>9.1f} {r['x_bare']:>7.2f}  {versus}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
