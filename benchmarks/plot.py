"""Plot the harness results: overhead per request, ours against the peer it replaces.

    python -m benchmarks.plot [--results FILE] [--out docs/performance.png]

Reads the JSON `python -m benchmarks.run` writes and draws one pair of horizontal bars
per comparison (every row that names a peer): our overhead over bare FastAPI and the
peer's, each measured against the bare baseline of its own process. Needs matplotlib
(in the `bench` extra); renders off-screen (Agg), so no display is needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OURS_COLOUR = "#2b7bb9"
PEER_COLOUR = "#b0b0b0"


Pair = tuple[str, float, str, float, float, float]


def comparisons(rows: list[dict[str, Any]]) -> list[Pair]:
    """(ours, our overhead, peer, peer overhead, ratio, target) for every peered row."""
    by_name = {row["configuration"]: row for row in rows}
    pairs = []
    for row in rows:
        peer = by_name.get(row.get("peer") or "")
        if peer is None:
            continue
        pairs.append(
            (
                row["configuration"],
                row["overhead_us"],
                peer["configuration"],
                peer["overhead_us"],
                row["ratio_to_peer"],
                row["target"],
            )
        )
    return pairs


def _label(name: str) -> str:
    return name.removeprefix("+ ")


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = comparisons(results["rows"])
    if not pairs:
        raise SystemExit("no row names a peer: nothing to plot")
    bar = 0.38
    figure, axes = plt.subplots(figsize=(10, 1.1 * len(pairs) + 1.4))
    longest = max(max(pair[1], pair[3]) for pair in pairs)
    for index, (_, ours, peer_name, theirs, ratio, target) in enumerate(reversed(pairs)):
        y = index * 1.0
        axes.barh(y + bar / 2, max(theirs, 0.0), bar, color=PEER_COLOUR)
        axes.barh(y - bar / 2, max(ours, 0.0), bar, color=OURS_COLOUR)
        axes.text(
            max(theirs, 0.0) + longest * 0.01,
            y + bar / 2,
            f"{theirs:.0f} us  {_label(peer_name)}",
            va="center",
            fontsize=8,
            color="#555555",
        )
        axes.text(
            max(ours, 0.0) + longest * 0.01,
            y - bar / 2,
            f"{ours:.0f} us  ({ratio:.2f}x"
            + (")" if target is None else f", target <= {target:g}x)"),
            va="center",
            fontsize=8,
            color=OURS_COLOUR,
            fontweight="bold",
        )
    axes.set_yticks([i * 1.0 for i in range(len(pairs))])
    axes.set_yticklabels([_label(p[0]) for p in reversed(pairs)], fontsize=9)
    axes.set_xlim(0, longest * 1.75)
    axes.set_xlabel("overhead per request over bare FastAPI, microseconds (lower is better)")
    axes.set_title(
        "amani-observability (blue) against what it replaces (grey)\n"
        f"in-process ASGI harness, Python {results.get('python', '?')}, "
        f"{results.get('rounds', '?')} rounds of {results.get('requests_per_round', '?')} "
        "requests, 20th percentile",
        fontsize=10,
    )
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.png")
    args = parser.parse_args(argv)
    plot(json.loads(args.results.read_text()), args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
