"""The bench table's arithmetic (benchmarks/run.py), on made-up measurements."""

from __future__ import annotations

from benchmarks.harness import BARE, Case
from benchmarks.run import aggregate


def test_each_figure_is_the_median_over_processes_against_their_own_bare() -> None:
    ours = Case("ours", lambda: None, group="g")
    measured = {
        "g": [
            {BARE: 100.0, "ours": 110.0},
            {BARE: 120.0, "ours": 124.0},
            {BARE: 90.0, "ours": 120.0},
        ]
    }

    bare, row = aggregate({"g": [ours]}, measured)

    assert (bare["configuration"], bare["us_per_request"], bare["overhead_us"]) == (
        BARE,
        100.0,
        0.0,
    )
    assert bare["x_bare"] == 1.0
    assert row["us_per_request"] == 120.0  # the median of 110, 124 and 120
    # Overheads are taken in each process first (10, 4, 30), then the median: not the
    # difference of the two medians (120 - 100 = 20).
    assert row["overhead_us_per_process"] == [10.0, 4.0, 30.0]
    assert row["overhead_us"] == 10.0
    assert row["x_bare"] == 1.1  # the median of 1.1, 1.033 and 1.333
    assert (row["group"], row["peer"], row["target"]) == ("g", None, None)
