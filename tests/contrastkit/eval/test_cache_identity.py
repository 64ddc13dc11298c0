"""The record cache is keyed by the run's real identity, and by nothing that does not change a score.

Each test reproduces a hole of issue 10 (stale scores reused without a word) at the runner level,
on a tiny model and a 3-5 question slice of the real data file written to tmp_path.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from contrastkit.errors import UsageError
from contrastkit.eval.runner import StrategySpec, parse_strategies, run_evaluation
from contrastkit.eval.truthfulqa_tasks import TruthfulQAConfig, TruthfulQAMC

GREEDY = [StrategySpec("greedy", "greedy")]


@pytest.fixture
def mc_file(tmp_path, shared_data):
    data = json.loads((shared_data / "truthfulqa/hub_013686a/mc_task.json").read_text())[:5]
    path = tmp_path / "mc.json"
    path.write_text(json.dumps(data))
    return path


class Counting(TruthfulQAMC):
    """TruthfulQAMC that records which question ids it computed."""

    computed: list

    def run_items(self, spec, items):
        self.computed = getattr(self, "computed", []) + [d["id"] for d in items]
        return super().run_items(spec, items)


def _task(model, tok, path, **kw):
    return Counting(model, tok, TruthfulQAConfig(data=str(path), preset=kw.pop("preset", "zero-shot"), **kw))


def _run(task, out, specs=GREEDY, **kw):
    return run_evaluation(task, specs, out, progress=False, plots=False, **kw)


def test_changed_data_bytes_are_refused(tiny_llama, tiny_tok, mc_file, tmp_path):
    out = tmp_path / "run"
    _run(_task(tiny_llama, tiny_tok, mc_file), out)
    data = json.loads(mc_file.read_text())
    mc_file.write_text(json.dumps(data[3:]))  # delete the first 3 questions: same path, other items at ids 0, 1
    with pytest.raises(UsageError, match=r"different task\.data_sha256"):
        _run(_task(tiny_llama, tiny_tok, mc_file), out)
    task = _task(tiny_llama, tiny_tok, mc_file)
    summary = _run(task, out, overwrite=True)
    assert task.computed == [0, 1] and summary["n_items"] == 2


def test_item_question_is_stored_and_checked(tiny_llama, tiny_tok, mc_file, tmp_path):
    out = tmp_path / "run"
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out)
    recs = [json.loads(x) for x in (out / "records/greedy.jsonl").read_text().splitlines()]
    data = json.loads(mc_file.read_text())
    assert [r["item_key"] for r in recs] == [data[0]["question"], data[1]["question"]]
    recs[1]["item_key"] = "Some other question?"
    (out / "records/greedy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(UsageError, match="item 1 was computed for"):
        _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out)


def test_adapter_changes_the_fingerprint(tiny_llama, tiny_tok, mc_file, tmp_path):
    from peft import LoraConfig, get_peft_model

    out = tmp_path / "run"
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out)
    torch.manual_seed(3)
    peft_model = get_peft_model(copy.deepcopy(tiny_llama), LoraConfig(r=2, target_modules=["q_proj"],
                                                                      init_lora_weights=False)).eval()
    with pytest.raises(UsageError, match=r"different model\."):
        _run(_task(peft_model, tiny_tok, mc_file, limit=2), out)


def test_other_model_weights_change_the_fingerprint(tiny_llama, tiny_tok, mc_file, tmp_path):
    from contrastkit.testing import tiny_llama as make_llama

    out = tmp_path / "run"
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out, model_name="same-name")
    with pytest.raises(UsageError, match=r"different model\.digest"):
        _run(_task(make_llama(seed=1), tiny_tok, mc_file, limit=2), out, model_name="same-name")


def test_preset_and_strategy_params_change_the_fingerprint(tiny_llama, tiny_tok, mc_file, tmp_path):
    out = tmp_path / "run"
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=1), out)
    with pytest.raises(UsageError, match=r"different task\.preset"):
        _run(_task(tiny_llama, tiny_tok, mc_file, limit=1, preset="qa-primer"), out)
    spec = parse_strategies("sample", {"sample": {"temperature": 0.7}}, labels="s")
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=1), out, spec)
    spec = parse_strategies("sample", {"sample": {"temperature": 0.8}}, labels="s")
    with pytest.raises(UsageError, match=r"different strategy\.temperature \(strategy\.temperature: 0\.7 -> 0\.8\)"):
        _run(_task(tiny_llama, tiny_tok, mc_file, limit=1), out, spec)


def test_amateur_directory_contents_change_the_fingerprint(tmp_path):
    from .test_runner import CountingTask

    amateur = tmp_path / "amateur"
    amateur.mkdir()
    (amateur / "adapter_model.safetensors").write_bytes(b"weights v1")
    spec = [StrategySpec("icd-a", "icd", {"amateur": str(amateur)})]
    _run(CountingTask(3), tmp_path / "run", spec)
    (amateur / "adapter_model.safetensors").write_bytes(b"weights v2")  # retrained in place: same path
    with pytest.raises(UsageError, match=r"different strategy\.amateur\.files\.adapter_model\.safetensors"):
        _run(CountingTask(3), tmp_path / "run", spec)


def test_limit_and_batch_size_do_not_force_a_recompute(tiny_llama, tiny_tok, mc_file, tmp_path):
    out = tmp_path / "run"
    first = _task(tiny_llama, tiny_tok, mc_file, limit=2, batch_size=4)
    _run(first, out)
    assert first.computed == [0, 1]
    extended = _task(tiny_llama, tiny_tok, mc_file, batch_size=7)  # the full 5 questions, another batch size
    summary = _run(extended, out)
    assert extended.computed == [2, 3, 4] and summary["strategies"]["greedy"]["n_items"] == 5
    straight = _run(_task(tiny_llama, tiny_tok, mc_file), tmp_path / "straight")
    assert summary["strategies"]["greedy"]["metrics"] == pytest.approx(
        straight["strategies"]["greedy"]["metrics"], abs=1e-6)


def test_reports_keep_every_run_in_the_directory(tiny_llama, tiny_tok, mc_file, tmp_path):
    out = tmp_path / "run"
    first = parse_strategies("sample", {"sample": {"top_k": 5}})
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out, first)
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out)
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out, parse_strategies("sample", {"sample": {"top_k": 7}}))
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out)  # a rerun does not move greedy to the front
    summary = json.loads((out / "summary.json").read_text())
    labels = list(summary["strategies"])
    assert len(labels) == 3 and labels[:2] == [first[0].label, "greedy"]  # order first started: stable baseline
    assert {r["baseline"] for r in summary["paired"]} == {first[0].label}
    assert {summary["strategies"][k]["params"].get("top_k") for k in labels} == {None, 5, 7}
    table = (out / "results.md").read_text()
    assert all(f"| {k} |" in table for k in labels)
    assert len(summary["paired"]) == 2 * 4  # two runs against the first, four per-item metrics


def test_a_refused_run_leaves_no_files_behind(tiny_llama, tiny_tok, mc_file, tmp_path):
    """Two labels, the second refused at its fingerprint check: the first label gets no meta, no records."""
    out = tmp_path / "run"
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out, specs=[StrategySpec("s2", "sample", {"top_p": 0.5})])
    before = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    specs = [StrategySpec("greedy", "greedy"), StrategySpec("s2", "sample", {"top_p": 0.9})]  # s2: other params
    with pytest.raises(UsageError, match="different"):
        _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out, specs=specs)
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir()} == before
    # with --overwrite the same run goes through and rewrites s2
    _run(_task(tiny_llama, tiny_tok, mc_file, limit=2), out, specs=specs, overwrite=True)
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "greedy.jsonl", "greedy.meta.json", "s2.jsonl", "s2.meta.json"]
