import json

import pytest

from contrastkit.errors import UsageError
from contrastkit.eval.runner import StrategySpec, parse_strategies, run_evaluation
from contrastkit.eval.truthfulqa_tasks import TruthfulQAConfig, TruthfulQAMC


class CountingTask:
    """A cheap deterministic task that records which items it computed."""

    name = "counting"
    report_columns = ["mean"]
    plots = [("bar", "mean")]

    def __init__(self, n=10):
        self.n, self.computed = n, []

    def config(self):
        return {"n": self.n}

    def items(self):
        return [{"id": i, "x": i * i} for i in range(self.n)]

    def run_items(self, spec, items):
        self.computed += [it["id"] for it in items]
        return [{"y": it["x"] + len(spec.name)} for it in items]

    def summarize(self, spec, records):
        return {"mean": sum(r["y"] for r in records) / len(records)}


class Interrupt(Exception):
    pass


def _stop_after(k):
    def hook(label, n_done):
        if n_done >= k:
            raise Interrupt
    return hook


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_resume_recomputes_nothing(tmp_path):
    specs = [StrategySpec("greedy", "greedy"), StrategySpec("sample", "sample")]
    task = CountingTask()
    with pytest.raises(Interrupt):
        run_evaluation(task, specs, tmp_path / "a", chunk_size=3, progress=False, on_chunk=_stop_after(6))
    assert task.computed == list(range(6))
    resumed = CountingTask()
    summary = run_evaluation(resumed, specs, tmp_path / "a", chunk_size=3, progress=False)
    assert resumed.computed == list(range(6, 10)) + list(range(10))  # greedy: only the rest; sample: all
    straight = run_evaluation(CountingTask(), specs, tmp_path / "b", chunk_size=3, progress=False)
    for label in ("greedy", "sample"):
        a = [{k: v for k, v in r.items() if k != "time_s"} for r in _records(tmp_path / "a/records" / f"{label}.jsonl")]
        b = [{k: v for k, v in r.items() if k != "time_s"} for r in _records(tmp_path / "b/records" / f"{label}.jsonl")]
        assert sorted(a, key=lambda r: r["id"]) == b
        assert summary["strategies"][label]["metrics"] == straight["strategies"][label]["metrics"]
    for name in ("summary.json", "results.md", "mean.png"):
        assert (tmp_path / "a" / name).is_file()
    assert "| greedy |" in (tmp_path / "a/results.md").read_text()


def test_torn_last_line_is_dropped_and_recomputed(tmp_path):
    spec = [StrategySpec("greedy", "greedy")]
    run_evaluation(CountingTask(4), spec, tmp_path, chunk_size=2, progress=False)
    path = tmp_path / "records" / "greedy.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 7])  # kill in the middle of writing the last record
    task = CountingTask(4)
    run_evaluation(task, spec, tmp_path, chunk_size=2, progress=False)
    assert task.computed == [3]
    assert [r["id"] for r in _records(path)] == [0, 1, 2, 3]


def test_changed_config_is_refused_unless_overwrite(tmp_path):
    spec = [StrategySpec("greedy", "greedy")]
    run_evaluation(CountingTask(4), spec, tmp_path, progress=False)
    with pytest.raises(UsageError, match=r"different task\.n \(task\.n: 4 -> 5\)"):
        run_evaluation(CountingTask(5), spec, tmp_path, progress=False)
    task = CountingTask(5)
    run_evaluation(task, spec, tmp_path, progress=False, overwrite=True)
    assert task.computed == list(range(5))


def test_parse_strategies():
    specs = parse_strategies("greedy,sample", {"sample": {"top_p": 0.9}}, {"amateur": "x"})
    assert [(s.name, s.params) for s in specs] == [("greedy", {}), ("sample", {"top_p": 0.9})]
    with pytest.raises(UsageError, match="Did you mean 'greedy'"):
        parse_strategies("gredy")
    with pytest.raises(UsageError, match="no parameter 'top_q'"):
        parse_strategies("sample", {"sample": {"top_q": 0.9}})
    with pytest.raises(UsageError, match="not in --strategies"):
        parse_strategies("greedy", {"sample": {}})


def test_truthfulqa_mc_interrupted_equals_uninterrupted(tiny_llama, tiny_tok, shared_data, tmp_path):
    cfg = TruthfulQAConfig(data=str(shared_data / "truthfulqa/hub_013686a/mc_task.json"), limit=3, preset="zero-shot")
    spec = [StrategySpec("greedy", "greedy")]
    with pytest.raises(Interrupt):
        run_evaluation(TruthfulQAMC(tiny_llama, tiny_tok, cfg), spec, tmp_path / "a", chunk_size=2,
                       progress=False, on_chunk=_stop_after(2))
    resumed = run_evaluation(TruthfulQAMC(tiny_llama, tiny_tok, cfg), spec, tmp_path / "a", chunk_size=2,
                             progress=False)
    straight = run_evaluation(TruthfulQAMC(tiny_llama, tiny_tok, cfg), spec, tmp_path / "b", chunk_size=2,
                              progress=False)
    a, b = resumed["strategies"]["greedy"]["metrics"], straight["strategies"]["greedy"]["metrics"]
    assert a == pytest.approx(b, abs=1e-9)
    recs = _records(tmp_path / "a/records/greedy.jsonl")
    assert [r["id"] for r in recs] == [0, 1, 2] and all(0 <= r["mc2"] <= 1 for r in recs)
    assert json.loads((tmp_path / "a/summary.json").read_text())["task_config"]["preset"] == "zero-shot"
    assert (tmp_path / "a/mc1_mc2_mc3.png").is_file()


def test_run_labels():
    specs = parse_strategies("greedy,sample", {"sample": {"top_p": 0.9}})
    assert specs[0].label == "greedy" and specs[1].label.startswith("sample-") and len(specs[1].label) == 13
    other = parse_strategies("sample", {"sample": {"top_p": 0.8}})[0].label
    assert other != specs[1].label  # two settings of one strategy get two record files
    assert parse_strategies("sample", {"sample": {"top_p": 0.9}})[0].label == specs[1].label  # stable
    assert [s.label for s in parse_strategies("greedy,sample", labels="base,hot")] == ["base", "hot"]
    with pytest.raises(UsageError, match="one distinct, non-empty label per strategy"):
        parse_strategies("greedy,sample", labels="base")
    with pytest.raises(UsageError, match="plain file name"):
        parse_strategies("greedy", labels="../x")
