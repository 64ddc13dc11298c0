import json

import numpy as np
import pytest
import torch

from contrastkit.errors import UsageError
from contrastkit.eval.mauve_features import compute_mauve, make_featurizer, pool_hidden
from contrastkit.eval.open_ended import OpenEnded, OpenEndedConfig, load_prefix_pairs
from contrastkit.eval.runner import StrategySpec, run_evaluation


def test_mauve_identical_high_disjoint_low():
    pytest.importorskip("mauve")
    rng = np.random.default_rng(0)
    p = rng.normal(size=(60, 8)).astype(np.float32)
    same = compute_mauve(p, p.copy())
    assert same["mauve"] == pytest.approx(1.0, abs=1e-6)
    far = compute_mauve(p, p + 20.0)  # disjoint supports: every cluster holds only one side
    assert far["mauve"] < 0.05
    with pytest.raises(UsageError, match="equal width"):
        compute_mauve(p, p[:, :4])


def test_pool_hidden_last_and_mean_with_either_padding():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert pool_hidden(h, left, "last")[:, 0].tolist() == [3.0, 7.0]
    assert pool_hidden(h, right, "last")[:, 0].tolist() == [2.0, 7.0]
    assert pool_hidden(h, right, "mean")[:, 0].tolist() == [1.0, 5.5]


def test_self_featurizer_is_batch_invariant(tiny_llama, tiny_tok):
    texts = ["the cat sat", "a much longer sentence about nothing in particular", "x"]
    f3 = make_featurizer("self", model=tiny_llama, tokenizer=tiny_tok, batch_size=3)(texts)
    f1 = make_featurizer("self", model=tiny_llama, tokenizer=tiny_tok, batch_size=1)(texts)
    assert f3.shape == (3, tiny_llama.config.hidden_size)
    np.testing.assert_allclose(f3, f1, atol=1e-4)


def test_load_prefix_pairs(tmp_path, tiny_tok):
    raw = tmp_path / "wiki.test.raw"
    body = " ".join(f"word{i}" for i in range(80))
    raw.write_text(f" = Title = \r\n\r\n {body} \r\n short line \r\n")
    items = load_prefix_pairs(raw, tiny_tok, prefix_tokens=8, reference_tokens=16)
    assert len(items) == 1 and len(items[0]["prefix_ids"]) == 8
    assert items[0]["prefix"] + items[0]["reference"] == tiny_tok.decode(tiny_tok(body)["input_ids"][:24])
    js = tmp_path / "pairs.jsonl"
    js.write_text('{"prefix": "a", "reference": "b"}\n{"prefix": "c"\n')
    with pytest.raises(UsageError, match=r"pairs\.jsonl:2: malformed JSON"):
        load_prefix_pairs(js)
    js.write_text('{"prefix": "a", "reference": "b"}\n{"prefix_text": "", "reference_text": "d"}\n')
    with pytest.raises(UsageError, match=r"pairs\.jsonl:2: needs a non-empty"):
        load_prefix_pairs(js)
    lst = tmp_path / "pairs.json"
    lst.write_text(json.dumps([{"prefix_text": "p", "reference_text": "r"}] * 3))
    assert [it["prefix"] for it in load_prefix_pairs(lst, limit=2)] == ["p", "p"]


def test_open_ended_task_end_to_end(tiny_llama, tiny_tok, tmp_path):
    pytest.importorskip("mauve")
    data = tmp_path / "pairs.jsonl"
    words = "the cat sat on a mat and then ran far away into the deep dark wood".split()
    with open(data, "w") as f:
        for i in range(6):
            f.write(json.dumps({"prefix": " ".join(words[i:i + 4]), "reference": " ".join(words[i + 4:])}) + "\n")
    cfg = OpenEndedConfig(data=str(data), max_new_tokens=12, featurizer="self", batch_size=3)
    task = OpenEnded(tiny_llama, tiny_tok, cfg)
    specs = [StrategySpec("greedy", "greedy"), StrategySpec("sample", "sample", {"top_k": 20})]
    summary = run_evaluation(task, specs, tmp_path / "out", chunk_size=4, progress=False)
    greedy = summary["strategies"]["greedy"]["metrics"]
    for key in ("rep-2", "rep-3", "rep-4", "diversity", "mauve", "coherence", "coherence_logprob", "gen_length"):
        assert key in greedy
    assert 0.0 <= greedy["mauve"] <= 1.0 and greedy["gen_length"] <= 12
    assert greedy["coherence_logprob"] < 0
    assert (tmp_path / "out" / "mauve_vs_diversity.png").is_file()
    recs = [json.loads(x) for x in (tmp_path / "out/records/sample.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all("generation" in r for r in recs)


def test_open_ended_report_shows_deviations_and_units(tiny_llama, tiny_tok, tmp_path):
    pytest.importorskip("mauve")
    data = tmp_path / "pairs.jsonl"
    words = "the cat sat on a mat and then ran far away into the deep dark wood".split()
    data.write_text("".join(json.dumps({"prefix": " ".join(words[i:i + 4]), "reference": " ".join(words[i + 4:])})
                            + "\n" for i in range(6)))
    cfg = OpenEndedConfig(data=str(data), max_new_tokens=6, featurizer="self", batch_size=6, mauve_seeds=3)
    summary = run_evaluation(OpenEnded(tiny_llama, tiny_tok, cfg), [StrategySpec("greedy", "greedy")], tmp_path / "o",
                             progress=False)
    assert summary["dataset"]["featurizer"] == "self"
    assert any("MAUVE over 6 texts per side" in w for w in summary["warnings"])
    m = summary["strategies"]["greedy"]["metrics"]
    assert m["mauve_seeds"] == 3 and m["mauve_min"] <= m["mauve"] <= m["mauve_max"] and "mauve_std" in m
    table = (tmp_path / "o/results.md").read_text()
    assert "mauve (%, generator's own features)" in table and "coherence (generator's own cosine)" in table
    assert "diversity (%)" in table and "rep-2 (%)" in table
    row = next(line for line in table.splitlines() if line.startswith("| greedy |"))
    header = next(line for line in table.splitlines() if line.startswith("| run |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert float(cells["diversity (%)"]) == pytest.approx(100 * m["diversity"], abs=1e-2)  # one unit: percent
