"""Generation tasks on ``--backend vllm``: same records as the HF path, and the backend in the cache key.

The server is :func:`contrastkit.testing.openai_completions_standin`, which serves the tiny model with
vLLM's request semantics, so greedy through it must give exactly the HF path's generations and scores.
"""

from __future__ import annotations

import csv
import json

import pytest

from contrastkit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [  # TruthfulQA CSV columns; made-up rows (no license needed)
    ("Adversarial", "Misconceptions", "What happens if you eat a red fish?", "Nothing happens",
     "Nothing happens; You eat a fish", "You turn red; You die"),
    ("Non-Adversarial", "Fiction", "Who lived in the old house by the river?", "I have no comment",
     "Nobody in particular", "A king lived there; A queen lived there"),
    ("Adversarial", "Science", "Is the sea blue?", "It often looks blue", "It often looks blue; Yes",
     "No, it is green"),
]


@pytest.fixture
def tqa_csv(tmp_path):
    path = tmp_path / "tqa.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        for row in ROWS:
            w.writerow([*row, "made up"])
    return path


@pytest.fixture
def server(tiny_model_dir):
    from contrastkit.models import load_model
    from contrastkit.testing import openai_completions_standin

    model, tok = load_model(str(tiny_model_dir))
    srv, url, requests = openai_completions_standin(model, tok)
    yield url, requests
    srv.shutdown()
    srv.server_close()


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_truthfulqa_gen_on_vllm_equals_hf_and_keys_the_cache(tmp_path, tiny_model_dir, tqa_csv, server, capsys):
    url, requests = server
    common = ["eval", "truthfulqa", "--mode", "gen", "--model", str(tiny_model_dir), "--data", str(tqa_csv),
              "--max_new_tokens", "12", "--batch_size", "2", "--quiet"]
    code, err = _run(capsys, [*common, "--output_dir", str(tmp_path / "hf")])
    assert code == 0, err
    code, err = _run(capsys, [*common, "--output_dir", str(tmp_path / "vllm"), "--backend", "vllm", "--vllm_url", url])
    assert code == 0, err
    hf, vl = _records(tmp_path / "hf/records/greedy.jsonl"), _records(tmp_path / "vllm/records/greedy.jsonl")
    assert len(hf) == len(vl) == 3
    for a, b in zip(hf, vl):
        assert a["answer"] == b["answer"] and a["bleu_acc"] == b["bleu_acc"] and a["rouge1_max"] == b["rouge1_max"]
    assert len(requests) == 2 and all(r["stop"] == ["\n\n"] and r["temperature"] == 0 for r in requests)
    # the backend is part of the run's identity: an HF run cannot resume a vLLM directory silently
    code, err = _run(capsys, [*common, "--output_dir", str(tmp_path / "vllm")])
    assert code == 2 and "backend" in err and "--overwrite" in err


def test_open_ended_on_vllm_equals_hf(tmp_path, tiny_model_dir, server, capsys):
    from contrastkit.testing import CORPUS_WORDS

    url, requests = server
    text = tmp_path / "wiki.raw"
    text.write_text("\n".join(" ".join(CORPUS_WORDS[i:] + CORPUS_WORDS[:i]) for i in range(0, 12, 4)) + "\n")
    common = ["eval", "open-ended", "--model", str(tiny_model_dir), "--data", str(text), "--prefix_tokens", "8",
              "--max_new_tokens", "6", "--mauve", "false", "--featurizer", "self", "--quiet"]
    assert _run(capsys, [*common, "--output_dir", str(tmp_path / "hf")])[0] == 0
    code, err = _run(capsys, [*common, "--output_dir", str(tmp_path / "vllm"), "--backend", "vllm",
                              "--vllm_url", url])
    assert code == 0, err
    hf, vl = _records(tmp_path / "hf/records/greedy.jsonl"), _records(tmp_path / "vllm/records/greedy.jsonl")
    assert len(hf) == len(vl) == 3 and requests
    assert [r["generation"] for r in hf] == [r["generation"] for r in vl]
    assert [r["coherence_logprob"] for r in hf] == pytest.approx([r["coherence_logprob"] for r in vl])


@pytest.mark.parametrize("extra, match", [
    (["--mode", "mc", "--backend", "vllm", "--vllm_url", "http://127.0.0.1:9"], "runs generation only"),
    (["--mode", "gen", "--backend", "vlm"], "Did you mean 'vllm'"),
    (["--mode", "gen", "--backend", "vllm"], "needs --vllm_url"),
    (["--mode", "gen", "--backend", "vllm", "--vllm_url", "http://127.0.0.1:9", "--strategies", "greedy,dola"],
     "strategy 'dola' cannot run with --backend vllm"),
    (["--mode", "gen", "--backend", "vllm", "--vllm_url", "http://127.0.0.1:9"], "did not answer"),
])
def test_bad_backend_input_is_one_line_before_loading(tmp_path, tqa_csv, extra, match, capsys):
    code, err = _run(capsys, ["eval", "truthfulqa", "--model", str(tmp_path / "no-such-model"), "--data",
                              str(tqa_csv), "--output_dir", str(tmp_path / "o"), *extra])
    assert code == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_mistyped_amateur_fails_before_the_model_loads(tmp_path, tqa_csv, monkeypatch, capsys):
    import contrastkit.models

    (tmp_path / "runs" / "amateur").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the amateur was checked")

    monkeypatch.setattr(contrastkit.models, "load_model", no_load)
    code, err = _run(capsys, ["eval", "truthfulqa", "--strategies", "icd", "--amateur", "runs/amateurX",
                              "--data", str(tqa_csv), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "Did you mean 'runs/amateur'" in err and len(err.strip().splitlines()) == 1
