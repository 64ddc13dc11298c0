"""TruthfulQA protocol details that change numbers: which data revision, lm-eval's generation task.

* The report records which file/revision was scored and warns when it is not an 817-question set.
* The ``lmeval`` generation preset reproduces lm-eval 0.4.13 ``truthfulqa_gen``: its context
  (rendered from lm-eval's own YAML here), its references and its ``process_results_gen``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from contrastkit.eval import metrics
from contrastkit.eval.runner import StrategySpec, run_evaluation
from contrastkit.eval.truthfulqa import dataset_info, load_truthfulqa
from contrastkit.eval.truthfulqa_tasks import (
    TruthfulQAConfig,
    TruthfulQAGen,
    TruthfulQAMC,
    extract_answer,
    gen_references,
)


def test_dataset_info_names_revision_and_warns_off_the_817_set(shared_data):
    tqa = shared_data / "truthfulqa"
    hub = dataset_info(tqa / "hub_013686a/mc_task.json", load_truthfulqa(tqa / "hub_013686a/mc_task.json"))
    assert hub["n_questions"] == 817 and hub["revision"].startswith("013686a") and "warning" not in hub
    assert hub["sha256"].startswith("6eb4125d")
    new = dataset_info(tqa / "mc_task.json", load_truthfulqa(tqa / "mc_task.json"))
    assert new["n_questions"] == 790 and "790 questions" in new["warning"] and "817" in new["warning"]
    new_csv = dataset_info(tqa / "TruthfulQA.csv", load_truthfulqa(tqa / "TruthfulQA.csv"))
    assert new_csv["sha256"] != new["sha256"] and new_csv["revision"] != new["revision"]


def test_report_records_revision_and_warns(tiny_llama, tiny_tok, shared_data, tmp_path):
    cfg = TruthfulQAConfig(data=str(shared_data / "truthfulqa/mc_task.json"), preset="zero-shot", limit=2)
    summary = run_evaluation(TruthfulQAMC(tiny_llama, tiny_tok, cfg), [StrategySpec("greedy", "greedy")], tmp_path,
                             progress=False, plots=False)
    assert summary["dataset"]["n_questions"] == 790 and summary["dataset"]["revision"].startswith("d71c110")
    assert any("not the 817-question set" in w for w in summary["warnings"])
    table = (tmp_path / "results.md").read_text()
    assert "warning:** mc_task.json has 790 questions" in table and "revision `d71c110" in table


def _lm_eval_doc_to_text() -> str:
    import yaml

    lm_eval = pytest.importorskip("lm_eval")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: None)
    path = Path(lm_eval.__file__).parent / "tasks/truthfulqa/truthfulqa_gen.yaml"
    return yaml.load(path.read_text(), Loader=Loader)["doc_to_text"]


def _csv_rows(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [row for _, row in zip(range(n), csv.DictReader(f))]


COMPLETIONS = [" No, it is not true.", " I have no comment.", "  Nothing in particular happens .  It is fine . ",
               " The watermelon seeds pass through your digestive system"]


def test_lmeval_gen_preset_equals_lm_eval_process_results(tiny_llama, tiny_tok, shared_data):
    from lm_eval.tasks.truthfulqa import utils as lm_utils
    from lm_eval.utils import apply_template

    path = shared_data / "truthfulqa/v1/TruthfulQA.csv"
    task = TruthfulQAGen(tiny_llama, tiny_tok, TruthfulQAConfig(data=str(path), limit=4))
    assert task.cfg.max_new_tokens == 256 and task.cfg.gen_preset == "lmeval"  # lm-eval's max_gen_toks default
    template = _lm_eval_doc_to_text()
    for row, d, completion in zip(_csv_rows(path, 4), task.items(), COMPLETIONS):
        q = d["item"]
        raw = {"question": row["Question"], "correct_answers": row["Correct Answers"].split(";"),
               "incorrect_answers": row["Incorrect Answers"].split(";")}
        doc = lm_utils.preprocess_function(raw)
        assert task.context(q.question) == apply_template(template, doc)  # no "\nA:" at the end
        true_refs, false_refs = gen_references(q)
        assert (true_refs, false_refs) == (doc["correct_answers"], doc["incorrect_answers"])
        answer = extract_answer(completion + "\n\nQ: next question", "lmeval")
        assert answer == completion  # cut at the blank line, not stripped
        ours = metrics.reference_similarity(answer, true_refs, false_refs)
        theirs = lm_utils.process_results_gen(doc, [completion])
        assert set(theirs) <= set(ours)  # rouge2 included
        for k, v in theirs.items():
            assert ours[k] == pytest.approx(float(v), abs=1e-9), k


def test_contrastkit_gen_preset_is_named_and_strips(tiny_llama, tiny_tok, shared_data, tmp_path):
    path = shared_data / "truthfulqa/v1/TruthfulQA.csv"
    cfg = TruthfulQAConfig(data=str(path), limit=2, gen_preset="contrastkit", max_new_tokens=4)
    assert extract_answer("  Yes.\nQ: next", "contrastkit") == "Yes."
    summary = run_evaluation(TruthfulQAGen(tiny_llama, tiny_tok, cfg), [StrategySpec("greedy", "greedy")], tmp_path,
                             progress=False, plots=False)
    assert summary["task_config"]["gen_preset"] == "contrastkit"
    assert "gen_preset: `contrastkit`" in (tmp_path / "results.md").read_text()
    recs = [json.loads(x) for x in (tmp_path / "records/greedy.jsonl").read_text().splitlines()]
    assert all(r["answer"] == r["raw"].split("Q:")[0].strip() for r in recs)
    assert all("rouge2_acc" in r for r in recs)


def test_mc_report_omits_generation_settings(tiny_llama, tiny_tok, shared_data, tmp_path):
    cfg = TruthfulQAConfig(data=str(shared_data / "truthfulqa/hub_013686a/mc_task.json"), preset="zero-shot", limit=1)
    run_evaluation(TruthfulQAMC(tiny_llama, tiny_tok, cfg), [StrategySpec("greedy", "greedy")], tmp_path,
                   progress=False, plots=False)
    table = (tmp_path / "results.md").read_text()
    assert "max_new_tokens" not in table and "gen_preset" not in table and "preset: `zero-shot`" in table
    assert "`mc1_lmeval`: MC1 with lm-eval's argmax tie rule" in table
