"""CoACT reports: per-method spreads over seeds, the Markdown table cell by cell, and the plot."""

from __future__ import annotations

import math

import pytest

from contrastkit.alignment.coact_report import aggregate, markdown_table, plot_sessions


def _s(acc, base, new):
    return {"acc": acc, "acc_base": base, "acc_new": new}


RUNS = {
    # two seeds, two sessions each; binary-exact values so every mean / standard error is exact
    "A": {0: [_s(0.75, 0.75, None), _s(0.5, 0.625, 0.25)],
          1: [_s(0.5, 0.5, None), _s(0.25, 0.375, 0.0)]},
    # one seed, base session only: no new classes ever, one seed -> no standard error
    "B": {3: [_s(0.5, 0.5, None)]},
    "D": {0: [_s(0.75, 0.75, None), _s(0.5, 0.5, 0.5), _s(0.25, 0.5, 0.0)]},
}


def test_aggregate_by_hand():
    agg = aggregate(RUNS)
    a = agg["A"]
    assert a["seeds"] == [0, 1] and set(a["per_seed"]) == {"0", "1"}
    assert [s["mean"] for s in a["sessions"]] == pytest.approx([0.625, 0.375])  # overall acc, not acc_base
    assert [s["stderr"] for s in a["sessions"]] == pytest.approx([0.125, 0.125])
    assert [s["n"] for s in a["sessions"]] == [2, 2]
    want = {"avg_acc": (0.5, 0.125), "final_acc": (0.375, 0.125), "final_acc_base": (0.5, 0.125),
            "final_acc_new": (0.125, 0.125), "drop": (0.25, 0.0), "base_forgetting": (0.125, 0.0)}
    for k, (mean, se) in want.items():
        assert a["summary"][k]["mean"] == pytest.approx(mean), k
        assert a["summary"][k]["stderr"] == pytest.approx(se, abs=1e-12), k
    b = agg["B"]
    assert "final_acc_new" not in b["summary"]  # None for every seed: no entry, not a NaN one
    assert b["summary"]["avg_acc"]["n"] == 1 and math.isnan(b["summary"]["avg_acc"]["stderr"])


def test_aggregate_unfinished_and_empty_seeds():
    agg = aggregate({"C": {0: [_s(0.5, 0.5, None), _s(0.25, 0.5, 0.0), _s(0.25, 0.25, 0.25)],
                           1: [_s(0.75, 0.75, None), _s(0.5, 0.5, 0.5)]}})
    c = agg["C"]
    assert [s["mean"] for s in c["sessions"]] == pytest.approx([0.625, 0.375])  # sessions every seed finished
    assert c["per_seed"]["0"]["final_acc"] == 0.25 and c["per_seed"]["1"]["final_acc"] == 0.5
    e = aggregate({"E": {0: [_s(0.5, 0.5, None), _s(0.25, 0.5, 0.0)], 1: []}})["E"]
    assert set(e["per_seed"]) == {"0"} and e["seeds"] == [0, 1]
    assert e["summary"]["avg_acc"]["n"] == 1 and e["summary"]["avg_acc"]["mean"] == pytest.approx(0.375)


def test_markdown_table_cells():
    lines = markdown_table(aggregate(RUNS)).splitlines()
    assert lines[0] == ("| method | seeds | s0 | s1 | s2 | avg | final | base (final) | new (final) | drop | "
                        "base forgetting |")
    assert lines[1] == "|" + "---|" * 11
    assert lines[2] == ("| A | 2 | 62.5 ± 12.5 | 37.5 ± 12.5 | - | 50.0 ± 12.5 | 37.5 ± 12.5 | 50.0 ± 12.5 | "
                        "12.5 ± 12.5 | 25.0 ± 0.0 | 12.5 ± 0.0 |")
    assert lines[3] == "| B | 1 | 50.0 | - | - | 50.0 | 50.0 | 50.0 | - | 0.0 | 0.0 |"
    assert lines[4] == "| D | 1 | 75.0 | 50.0 | 25.0 | 50.0 | 25.0 | 50.0 | 0.0 | 50.0 | 25.0 |"
    assert len(lines) == 5 and all(line.count("|") == 12 for line in lines)


def test_plot_sessions_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "acc.png"
    assert plot_sessions(aggregate(RUNS), path) is True
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_seeds_are_sorted():
    agg = aggregate({"A": {7: [_s(0.5, 0.5, None)], 2: [_s(0.25, 0.25, None)]}})
    assert agg["A"]["seeds"] == [2, 7]
