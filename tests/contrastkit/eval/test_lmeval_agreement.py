"""Per-question agreement with stock lm-evaluation-harness truthfulqa_mc1/mc2 (slow: runs lm-eval on SmolLM2)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _agreement(shared_data, tmp_path, limit: int):
    pytest.importorskip("lm_eval")
    spec = importlib.util.spec_from_file_location("eval_lmeval_agreement", REPO / "benchmarks/eval_lmeval_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_lmeval_agreement"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "agree.json"
    code = mod.main(["--limit", str(limit), "--data", str(shared_data / "truthfulqa/hub_013686a/mc_task.json"),
                     "--json", str(out), "--threads", "1"])
    return code, json.loads(out.read_text())["worst"]


@pytest.mark.integration
def test_truthfulqa_mc_agrees_with_lm_eval_two_questions(shared_data, tmp_path):
    """In CI by default: stock lm-eval truthfulqa_mc1/mc2 vs our harness on 2 questions, per answer."""
    code, worst = _agreement(shared_data, tmp_path, 2)
    assert code == 0, worst
    assert worst["ll"] < 1e-4 and worst["mc1"] == 0 and worst["mc2"] < 1e-4


@pytest.mark.slow
@pytest.mark.integration
def test_truthfulqa_mc_agrees_with_lm_eval(shared_data, tmp_path):
    code, worst = _agreement(shared_data, tmp_path, 20)
    assert code == 0, worst
    assert worst["ll"] < 1e-4 and worst["mc1"] == 0 and worst["mc2"] < 1e-4
