"""`make bench`: run every benchmark group, print the table, write results JSON.

    python -m benchmarks.run [--rounds 15] [--requests 2000] [--only GROUP] [--out FILE]

Each group runs in its own process (see harness.py); the table puts them side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import platform
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
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--only", help="run one group, in this process, and print its JSON")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)

    if args.only:
        print(json.dumps(run_group(args.only, args.rounds, args.requests)))
        return 0

    cases = all_cases()
    groups = sorted({c.group for c in cases}, key=lambda g: (g != "main", g))
    rows: list[dict[str, Any]] = []
    for group in groups:
        print(f"running group {group!r} ...", file=sys.stderr)
        process = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", "--only", group,
             "--rounds", str(args.rounds), "--requests", str(args.requests)],
            capture_output=True, text=True,
        )  # fmt: skip
        if process.returncode != 0:
            # Show why the group failed instead of a bare CalledProcessError.
            sys.stderr.write(process.stderr)
            raise SystemExit(f"group {group!r} failed (exit status {process.returncode})")
        medians = json.loads(process.stdout.strip().splitlines()[-1])
        bare = medians[BARE]
        for case in [BARE_CASE, *(c for c in cases if c.group == group)]:
            us = medians[case.name]
            rows.append(
                {
                    "group": group,
                    "configuration": case.name,
                    "us_per_request": round(us, 1),
                    "overhead_us": round(us - bare, 1),
                    "x_bare": round(us / bare, 3),
                    "peer": case.peer,
                    "target": case.target,
                    "bare_target": case.bare_target,
                }
            )
    by_name = {(r["group"], r["configuration"]): r for r in rows}
    for row in rows:
        if row["peer"]:
            peer = next(r for (g, n), r in by_name.items() if n == row["peer"])
            row["ratio_to_peer"] = round(row["overhead_us"] / peer["overhead_us"], 3)
            # A row without a target is shown for information: it cannot miss.
            target = row["target"]
            row["meets_target"] = None if target is None else row["ratio_to_peer"] <= target
    for row in rows:
        if row["bare_target"] is not None:
            row["meets_bare_target"] = row["x_bare"] <= row["bare_target"]
    _print_table(rows)
    for row in rows:
        if row["bare_target"] is not None:
            mark = "ok" if row["meets_bare_target"] else "MISSED"
            print(
                f"{row['configuration']}: {row['x_bare']:.2f}x bare "
                f"(target <= {row['bare_target']}) {mark}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "rounds": args.rounds,
                "requests_per_round": args.requests,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.out}")
    missed = [
        r["configuration"]
        for r in rows
        if r.get("meets_target") is False or r.get("meets_bare_target") is False
    ]
    if missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


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
