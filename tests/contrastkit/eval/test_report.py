"""Report and compare wiring: which numbers land in which cell, which items are paired,
and which records ``eval compare`` averages. Every expected value is worked out by hand below."""

from __future__ import annotations

import json

import pytest

from contrastkit.eval.compare import compare
from contrastkit.eval.report import _error_bars, markdown_table, paired_markdown, paired_tests
from contrastkit.eval.runner import StrategySpec, run_evaluation

from .test_compare import ItemTask


def test_paired_tests_pair_only_items_where_both_runs_have_the_metric():
    per_item = {
        "base": {0: {"m": 0.0}, 1: {"m": 1.0}, 2: {"m": 1.0}, 3: {"m": None}, 5: {"m": 0.0}},
        "run": {0: {"m": 1.0}, 1: {"m": 1.0}, 2: {"m": None}, 3: {"m": 1.0}, 4: {"m": 1.0}},
    }
    # shared items with a number on both sides: 0 and 1 -> run [1, 1], base [0, 1]: diff +0.5, 1 win, 1 tie
    [row] = paired_tests(per_item, ["m"])
    assert row["run"] == "run" and row["baseline"] == "base" and row["metric"] == "m" and row["n"] == 2
    assert row["diff"] == pytest.approx(0.5)
    assert (row["sign"]["wins"], row["sign"]["losses"], row["sign"]["ties"]) == (1, 0, 1)
    assert row["sign"]["p_value"] == pytest.approx(1.0)  # n = 1: 2 * P(X <= 0) = 2 * 1/2
    # a single shared item gives no row; an explicit baseline is used
    assert paired_tests({"a": {0: {"m": 1.0}}, "b": {0: {"m": 0.0}, 1: {"m": 1.0}}}, ["m"]) == []
    [row] = paired_tests(per_item, ["m"], baseline="run")
    assert row["run"] == "base" and row["baseline"] == "run" and row["diff"] == pytest.approx(-0.5)


def test_table_cell_is_mean_stderr_and_ci_all_scaled():
    summary = {"task": "toy", "strategies": {"r": {
        "name": "greedy", "params": {}, "metrics": {"acc": 0.5}, "n_items": 4, "items_per_s": None,
        "stats": {"acc": {"mean": 0.5, "stderr": 0.1, "ci_lo": 0.3, "ci_hi": 0.7, "n": 4}}}},
        "metric_scale": {"acc": 100.0}, "metric_labels": {"acc": "Acc (%)"}}
    table = markdown_table(summary, ["acc"])
    assert "| run | strategy | params | Acc (%) | n | items/s |" in table
    assert "| r | greedy | - | 50.00 ±10.00 [30.00, 70.00] | 4 | - |" in table
    summary["metric_scale"] = {}
    assert "| r | greedy | - | 0.5000 ±0.1000 [0.3000, 0.7000] | 4 | - |" in markdown_table(summary, ["acc"])


def test_paired_markdown_row_puts_each_number_in_its_column():
    rows = [{"run": "x", "baseline": "b", "metric": "acc", "n": 6, "diff": 1 / 3, "lo": 0.1, "hi": 0.6,
             "p_value": 0.25, "sign": {"wins": 2, "losses": 0, "ties": 4, "p_value": 0.5}}]
    out = paired_markdown(rows, {"metric_labels": {"acc": "Accuracy"}})
    assert "## Paired comparisons against `b` (same items)" in out[1]
    assert out[-1] == "| x | Accuracy | +0.3333 | [+0.1000, +0.6000] | 0.2500 | 2/0/4 | 0.5000 | 6 |"


def test_error_bars_are_distances_to_each_ci_bound_scaled():
    runs = {"r": {"stats": {"acc": {"ci_lo": 0.2, "ci_hi": 0.9}}}, "s": {"metrics": {"acc": 0.4}}}
    # r: mean 0.5 -> down 0.3, up 0.4, x2; s has no CI -> 0, 0
    lo, hi = _error_bars(runs, ["r", "s"], "acc", [0.5, 0.4], scale=2.0)
    assert lo == pytest.approx([0.6, 0.0]) and hi == pytest.approx([0.8, 0.0])
    assert _error_bars({"s": {}}, ["s"], "acc", [0.4]) is None


def _run(task, out, label, name):
    return run_evaluation(task, [StrategySpec(label, name)], out, progress=False, plots=False)


def test_compare_averages_every_record_not_the_last_limited_summary(tmp_path):
    # A scored 6 items (acc [1, 1, 0, 1, 0, 1], mean 4/6), then a rerun on the first 2 rewrote its summary
    # (acc 1.0, n 2); B scored only items 0 and 1 (acc [0, 1], mean 1/2)
    _run(ItemTask(6), tmp_path / "ra", "A", "greedy")
    limited = _run(ItemTask(2), tmp_path / "ra", "A", "greedy")
    assert limited["strategies"]["A"]["metrics"]["acc"] == 1.0 and limited["n_items"] == 2
    _run(ItemTask(2), tmp_path / "rb", "B", "sample")
    s = compare([tmp_path / "ra", tmp_path / "rb"], tmp_path / "cmp")
    a, b = s["strategies"]["ra/A"], s["strategies"]["rb/B"]
    assert a["metrics"]["acc"] == pytest.approx(4 / 6) and a["n_items"] == 6
    assert b["metrics"]["acc"] == pytest.approx(0.5) and b["n_items"] == 2
    assert s["n_items"] == 6  # the largest run
    assert s["warnings"] == []  # same (absent) data file everywhere
    # paired on the two shared items: B - A = [0 - 1, 1 - 1] -> diff -1/2, 0 wins, 1 loss, 1 tie
    [row] = s["paired"]
    assert (row["run"], row["baseline"], row["n"]) == ("rb/B", "ra/A", 2)
    assert row["diff"] == pytest.approx(-0.5)
    assert (row["sign"]["wins"], row["sign"]["losses"], row["sign"]["ties"]) == (0, 1, 1)


def test_compare_one_directory_keeps_plain_labels_and_warns_on_other_data(tmp_path):
    run_evaluation(ItemTask(), [StrategySpec("A", "greedy"), StrategySpec("B", "sample")], tmp_path / "r",
                   progress=False, plots=False)
    s = compare([tmp_path / "r"], tmp_path / "cmp")
    assert list(s["strategies"]) == ["A", "B"] and s["warnings"] == []
    [row] = s["paired"]
    assert (row["run"], row["baseline"], row["n"]) == ("B", "A", 6) and row["diff"] == pytest.approx(-1 / 3)
    # a second directory whose summary names another data file: a warning, and still paired by id + text
    run_evaluation(ItemTask(), [StrategySpec("B", "sample")], tmp_path / "r2", progress=False, plots=False)
    summary_path = tmp_path / "r2" / "summary.json"
    saved = json.loads(summary_path.read_text())
    saved["dataset"] = {"sha256": "0123abcd"}
    summary_path.write_text(json.dumps(saved))
    s = compare([tmp_path / "r", tmp_path / "r2"], tmp_path / "cmp2")
    assert any("different data files" in w for w in s["warnings"])


class ScaledTask(ItemTask):
    metric_scale = {"acc": 100.0}
    metric_labels = {"acc": "Accuracy (%)"}


def test_compare_carries_metric_scale_and_labels_into_its_table(tmp_path):
    run_evaluation(ScaledTask(), [StrategySpec("A", "greedy")], tmp_path / "r", progress=False, plots=False)
    s = compare([tmp_path / "r"], tmp_path / "cmp")
    assert s["metric_scale"] == {"acc": 100.0}
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| run | strategy | params | Accuracy (%) | n | items/s |" in table
    assert "| A | greedy | - | 66.67 ±" in table  # mean 4/6 shown x100


def test_compare_refuses_runs_of_different_tasks(tmp_path):
    from contrastkit.errors import UsageError

    class OtherTask(ItemTask):
        name = "other"

    run_evaluation(ItemTask(), [StrategySpec("A", "greedy")], tmp_path / "r1", progress=False, plots=False)
    run_evaluation(OtherTask(), [StrategySpec("B", "sample")], tmp_path / "r2", progress=False, plots=False)
    with pytest.raises(UsageError, match="different tasks"):
        compare([tmp_path / "r1", tmp_path / "r2"], tmp_path / "cmp")
