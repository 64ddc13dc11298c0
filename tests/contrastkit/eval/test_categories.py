"""Per-category breakdown for data without categories: ``--categories`` joins them by question.

``mc_task.json`` (and the Hub's multiple_choice config) carry no ``Category``/``Type``; the CSV and
the Hub's generation config do. The fixtures here are three hand-written questions (no data set is
copied): two of them are in the CSV, one is not.
"""

from __future__ import annotations

import csv
import json

import pytest

from contrastkit.errors import UsageError
from contrastkit.eval import truthfulqa as tq
from contrastkit.eval.runner import StrategySpec, run_evaluation
from contrastkit.eval.truthfulqa import attach_categories, load_truthfulqa
from contrastkit.eval.truthfulqa_tasks import TruthfulQAConfig, TruthfulQAMC

QUESTIONS = ["Who saw the dog?", "Is the tree red?", "Where is the sea?"]


def write_mc(path):
    rows = [{"question": q, "mc1_targets": {"the cat.": 1, "the king.": 0},
             "mc2_targets": {"the cat.": 1, "a cat.": 1, "the king.": 0}} for q in QUESTIONS]
    path.write_text(json.dumps(rows))
    return path


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers"])
        w.writeheader()
        for typ, cat, q in rows:
            w.writerow({"Type": typ, "Category": cat, "Question": q, "Best Answer": "x", "Correct Answers": "x",
                        "Incorrect Answers": "y"})
    return path


@pytest.fixture
def files(tmp_path):
    mc = write_mc(tmp_path / "mc_task.json")
    cats = write_csv(tmp_path / "TruthfulQA.csv", [("Adversarial", "Law", " Is the tree red? "),
                                                   ("Non-Adversarial", "Fiction", "Who saw the dog?"),
                                                   ("Adversarial", "Law", "A question not in the data?")])
    return mc, cats


def test_attach_categories_joins_by_question_and_counts(files, tmp_path):
    mc, cats = files
    items = load_truthfulqa(mc)
    assert all(it.category is None for it in items)
    assert attach_categories(items, cats) == 2
    assert [(it.category, it.type) for it in items] == [("Fiction", "Non-Adversarial"), ("Law", "Adversarial"),
                                                        (None, None)]
    other = write_csv(tmp_path / "other.csv", [("Adversarial", "Law", "Something else?")])
    with pytest.raises(UsageError, match="none of its 1 questions is one of the data's 3"):
        attach_categories(load_truthfulqa(mc), other)
    with pytest.raises(UsageError, match="does not exist"):
        attach_categories(items, tmp_path / "missing.csv")


def test_run_breakdown_from_categories_and_added_later_without_recompute(files, tiny_llama, tiny_tok, tmp_path,
                                                                         monkeypatch):
    mc, cats = files
    out = tmp_path / "run"
    first = run_evaluation(TruthfulQAMC(tiny_llama, tiny_tok, TruthfulQAConfig(data=str(mc), preset="zero-shot")),
                           [StrategySpec("greedy", "greedy")], out, progress=False, plots=False)
    assert not first["strategies"]["greedy"].get("breakdown")
    # the same run with categories: nothing is rescored (categories do not change a score) ...
    monkeypatch.setattr(tq.PrefixCachedScorer, "score", lambda *a, **k: pytest.fail("rescored"))
    task = TruthfulQAMC(tiny_llama, tiny_tok, TruthfulQAConfig(data=str(mc), preset="zero-shot", categories=str(cats)))
    summary = run_evaluation(task, [StrategySpec("greedy", "greedy")], out, progress=False, plots=False)
    # ... and the stored records are grouped by the categories given now
    recs = {r["question"]: r for r in map(json.loads, (out / "records/greedy.jsonl").read_text().splitlines())}
    b = summary["strategies"]["greedy"]["breakdown"]
    assert set(b["category"]) == {"Fiction", "Law"} and set(b["type"]) == {"Adversarial", "Non-Adversarial"}
    assert b["category"]["Law"]["n"] == 1 and b["category"]["Law"]["mc2"] == pytest.approx(recs[QUESTIONS[1]]["mc2"])
    assert b["category"]["Fiction"]["mc2"] == pytest.approx(recs[QUESTIONS[0]]["mc2"])
    assert recs[QUESTIONS[0]]["mc2"] != pytest.approx(recs[QUESTIONS[1]]["mc2"])  # the groups are told apart
    assert summary["dataset"]["categories"] == {"source": str(cats), "matched": 2, "of": 3}
    assert any("1 of 3 questions are not in" in w for w in summary["warnings"])
    table = (out / "results.md").read_text()
    assert "| Law |" in table and "| Fiction |" in table


def test_hub_data_joins_its_generation_config(monkeypatch):
    mc = [{"question": q, "mc1_targets": {"choices": ["a.", "b."], "labels": [1, 0]},
           "mc2_targets": {"choices": ["a.", "b."], "labels": [1, 0]}} for q in QUESTIONS]
    gen = [{"question": QUESTIONS[2], "category": "Geography", "type": "Adversarial"},
           {"question": QUESTIONS[0], "category": "Fiction", "type": "Non-Adversarial"}]
    asked = []
    monkeypatch.setattr(tq, "_load_hub", lambda name, config="multiple_choice": asked.append((name, config)) or
                        {"multiple_choice": mc, "generation": gen}[config])
    items = load_truthfulqa("truthfulqa/truthful_qa")
    assert asked == [("truthfulqa/truthful_qa", "multiple_choice"), ("truthfulqa/truthful_qa", "generation")]
    assert [it.category for it in items] == ["Fiction", None, "Geography"]
    # no generation config (offline, another data set): the items load, without categories
    monkeypatch.setattr(tq, "_load_hub", lambda name, config="multiple_choice": mc if config == "multiple_choice"
                        else (_ for _ in ()).throw(UsageError("offline")))
    assert [it.category for it in load_truthfulqa("truthfulqa/truthful_qa")] == [None, None, None]
