"""``contrastkit eval compare``: runs across directories, paired on the same items, hand-computed tests.

Run A's per-item acc is [1, 1, 0, 1, 0, 1] and run B's [0, 1, 0, 0, 0, 1] on items 0..5:
A - B = [1, 0, 0, 1, 0, 0], mean +1/3; sign test: 2 wins, 0 losses, 4 ties (dropped) ->
p = 2 * P(X <= 0 | n=2) = 2 * 1/4 = 0.5. Swapping run and baseline flips the sign and wins/losses.
"""

from __future__ import annotations

import json

import pytest

from contrastkit.cli.main import main
from contrastkit.errors import UsageError
from contrastkit.eval.compare import compare
from contrastkit.eval.runner import StrategySpec, run_evaluation

ACC = {"A": [1, 1, 0, 1, 0, 1], "B": [0, 1, 0, 0, 0, 1]}


class ItemTask:
    name = "toy"
    report_columns = ["acc"]
    item_metrics = ["acc"]
    higher_is_better = {"acc": True}
    plots = [("bar", "acc")]

    def __init__(self, n=6):
        self.n = n

    def config(self):
        return {}

    def items(self):
        return [{"id": i, "text": f"item {i}"} for i in range(self.n)]

    def item_key(self, item):
        return item["text"]

    def run_items(self, spec, items):
        return [{"acc": ACC[spec.label][it["id"]]} for it in items]

    def summarize(self, spec, records):
        return {"acc": sum(r["acc"] for r in records) / len(records)}


def _make(tmp_path):
    run_evaluation(ItemTask(), [StrategySpec("A", "greedy")], tmp_path / "ra", progress=False)
    run_evaluation(ItemTask(), [StrategySpec("B", "sample")], tmp_path / "rb", progress=False)
    return [tmp_path / "ra", tmp_path / "rb"]


def test_compare_pairs_runs_across_directories(tmp_path):
    dirs = _make(tmp_path)
    summary = compare(dirs, tmp_path / "cmp", baseline="rb/B")
    assert list(summary["strategies"]) == ["rb/B", "ra/A"]
    [row] = summary["paired"]
    assert row["run"] == "ra/A" and row["baseline"] == "rb/B" and row["n"] == 6
    assert row["diff"] == pytest.approx(1 / 3)
    assert (row["sign"]["wins"], row["sign"]["losses"], row["sign"]["ties"]) == (2, 0, 4)
    assert row["sign"]["p_value"] == pytest.approx(0.5)
    assert row["lo"] <= 1 / 3 <= row["hi"]
    st = summary["strategies"]["ra/A"]["stats"]["acc"]
    assert st["mean"] == pytest.approx(4 / 6) and st["n"] == 6
    # stderr with ddof=1: var = (4 * (1/3)^2 + 2 * (2/3)^2) / 5 = (4/9 + 8/9) / 5 = 4/15 -> sqrt(4/15) / sqrt(6)
    assert st["stderr"] == pytest.approx((4 / 15) ** 0.5 / 6 ** 0.5)
    table = (tmp_path / "cmp/compare.md").read_text()
    assert "| ra/A | acc | +0.3333 |" in table and "2/0/4" in table
    assert (tmp_path / "cmp/compare.png").is_file()
    saved = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert saved["paired"][0]["diff"] == pytest.approx(1 / 3)


def test_compare_never_pairs_different_items(tmp_path):
    dirs = _make(tmp_path)
    recs = [json.loads(x) for x in (dirs[1] / "records/B.jsonl").read_text().splitlines()]
    for r in recs[:3]:
        r["item_key"] = "another question"  # same ids, other items (e.g. another data revision)
    (dirs[1] / "records/B.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    [row] = compare(dirs, tmp_path / "cmp")["paired"]
    assert row["n"] == 3 and row["baseline"] == "ra/A"


def test_compare_cli_and_errors(tmp_path, capsys):
    dirs = _make(tmp_path)
    code = main(["eval", "compare", *map(str, dirs), "--output_dir", str(tmp_path / "c")])
    out = capsys.readouterr()
    assert code == 0 and "## Paired comparisons against `ra/A`" in out.out
    code = main(["eval", "compare", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="Did you mean 'ra/A'"):
        compare(dirs, tmp_path / "c", baseline="ra/a")
    with pytest.raises(UsageError, match="unknown metric 'ac'"):
        compare(dirs, tmp_path / "c", metrics=["ac"])


def test_directories_with_the_same_name_keep_both_runs(tmp_path):
    """exp1/out and exp2/out: rows named by enough trailing path parts to be unique, both runs paired."""
    run_evaluation(ItemTask(), [StrategySpec("A", "greedy")], tmp_path / "exp1" / "out", progress=False)
    run_evaluation(ItemTask(), [StrategySpec("B", "sample")], tmp_path / "exp2" / "out", progress=False)
    summary = compare([tmp_path / "exp1" / "out", tmp_path / "exp2" / "out"], tmp_path / "cmp",
                      baseline="exp2/out/B")
    assert list(summary["strategies"]) == ["exp2/out/B", "exp1/out/A"]
    assert summary["strategies"]["exp1/out/A"]["metrics"]["acc"] == pytest.approx(4 / 6)
    [row] = summary["paired"]
    assert row["run"] == "exp1/out/A" and row["diff"] == pytest.approx(1 / 3)
    # other names stay short: one part where one part is unique
    run_evaluation(ItemTask(), [StrategySpec("A", "greedy")], tmp_path / "solo", progress=False)
    s2 = compare([tmp_path / "solo", tmp_path / "exp2" / "out"], tmp_path / "cmp2")
    assert set(s2["strategies"]) == {"solo/A", "out/B"}


def test_a_directory_given_twice_is_refused(tmp_path):
    dirs = _make(tmp_path)
    with pytest.raises(UsageError, match="given twice"):
        compare([dirs[0], dirs[1], tmp_path / "ra" / ".." / "ra"], tmp_path / "cmp")
