"""``contrastkit generate --backend vllm`` against a stand-in OpenAI-compatible server on 127.0.0.1.

The stand-in serves the tiny HF model itself with vLLM's request semantics (token-id prompts,
``temperature=0`` = greedy, ``use_beam_search`` with width ``n`` returning beams best first,
``seed`` per request, ``min_tokens``). So greedy and beam through the vLLM backend must give the
same records as the HF backend, token for token; contrastive/CD/RankGen are refused in one line.
"""

from __future__ import annotations

import json

import pytest

from contrastkit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _OpenAIStandIn:
    """The shared stand-in's request log (contrastkit.testing.openai_completions_standin)."""

    requests: list = []


@pytest.fixture
def server(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from contrastkit.models import load_model
    from contrastkit.testing import openai_completions_standin

    _, tok = load_model(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    srv, url, _OpenAIStandIn.requests = openai_completions_standin(model, tok)
    yield url
    srv.shutdown()
    srv.server_close()


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_greedy_and_beam_records_match_hf_backend(tmp_path, tiny_model_dir, server, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "the cat saw"}, {"prompt": "a red king went to the"}, {"input_ids": [5, 6, 7]}]))
    hf, vl = [], []
    for strategy, extra in (("greedy", ["--min_new_tokens", "2"]), ("beam", ["--num_beams", "3"])):
        common = ["generate", "--model", str(tiny_model_dir), "--input", str(inp), "--strategy", strategy,
                  "--max_new_tokens", "6", "--batch_size", "2", *extra]
        assert main([*common, "--output", str(tmp_path / "hf.jsonl")]) == 0
        assert main([*common, "--output", str(tmp_path / "vllm.jsonl"), "--backend", "vllm",
                     "--vllm_url", server]) == 0, capsys.readouterr().err
        hf += _records(tmp_path / "hf.jsonl")
        vl += _records(tmp_path / "vllm.jsonl")
    assert len(hf) == len(vl) == 6
    same = ("index", "model", "prompt", "text", "token_ids", "strategy", "params", "prompt_tokens", "new_tokens")
    for a, b in zip(hf, vl):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        assert b["backend"] == "vllm" and b["vllm_model"] == "tiny-served" and "backend" not in a
    greedy = [r for r in _OpenAIStandIn.requests if not r.get("use_beam_search")]
    beam = [r for r in _OpenAIStandIn.requests if r.get("use_beam_search")]
    assert [len(r["prompt"]) for r in greedy] == [2, 1]  # --batch_size 2 -> one request per batch
    assert greedy[0]["temperature"] == 0 and greedy[0]["min_tokens"] == 2 and greedy[0]["model"] == "tiny-served"
    for r in _OpenAIStandIn.requests:  # nothing left for the server to fill from generation_config.json
        assert (r["min_p"], r["presence_penalty"], r["frequency_penalty"], r["repetition_penalty"]) == (0, 0, 0, 1)
    assert beam[0]["n"] == 3 and beam[0]["length_penalty"] == 1.0


def test_sample_sends_run_seed_per_batch_and_is_reproducible(tmp_path, tiny_model_dir, server, capsys):
    argv = ["generate", "--model", str(tiny_model_dir), "--backend", "vllm", "--vllm_url", server, "--strategy",
            "sample", "--temperature", "0.7", "--top_p", "0.9", "--seed", "5", "--batch_size", "1",
            "--max_new_tokens", "4", "the cat", "a dog"]
    assert main([*argv, "--output", str(tmp_path / "a.jsonl")]) == 0
    assert main([*argv, "--output", str(tmp_path / "b.jsonl")]) == 0
    reqs = _OpenAIStandIn.requests
    assert [r["seed"] for r in reqs] == [5, 6, 5, 6]  # seed + batch start, as the HF path seeds batches
    assert reqs[0]["temperature"] == 0.7 and reqs[0]["top_p"] == 0.9 and reqs[0]["top_k"] == 0
    a, b = _records(tmp_path / "a.jsonl"), _records(tmp_path / "b.jsonl")
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b] and a[0]["seed"] == 5


@pytest.mark.parametrize("strategy, why", [
    ("contrastive", "hidden states"), ("cd", "amateur"), ("dola", "premature layer"), ("rankgen", "RankGen")])
def test_hidden_state_strategies_refused_with_reason(tmp_path, tiny_model_dir, strategy, why, capsys):
    out = tmp_path / "o.jsonl"
    code = main(["generate", "--model", str(tiny_model_dir), "--backend", "vllm", "--vllm_url", "http://127.0.0.1:9",
                 "--strategy", strategy, "--output", str(out), "hi"])
    err = capsys.readouterr().err
    assert code == 2 and f"strategy '{strategy}' cannot run with --backend vllm" in err and why in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("extra, match", [
    (["--backend", "vlm", "--vllm_url", "http://x"], "Did you mean 'vllm'"),
    (["--backend", "vllm"], "needs --vllm_url"),
    (["--backend", "vllm", "--vllm_url", "http://127.0.0.1:9"], "did not answer"),
    (["--backend", "vllm", "--vllm_url", "http://x", "--strategy", "beam", "--early_stopping", "true"],
     "early_stopping"),
    (["--backend", "vllm", "--vllm_url", "http://x", "--strategy", "beam", "--min_new_tokens", "2"],
     "beam with min_new_tokens > 0 has no vLLM equivalent"),
])
def test_bad_backend_input_is_one_line(tmp_path, tiny_model_dir, extra, match, capsys):
    out = tmp_path / "o.jsonl"
    code = main(["generate", "--model", str(tiny_model_dir), *extra, "--output", str(out), "hi"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err and not out.exists()


def test_backend_vllm_under_accelerate_launch_is_refused(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["generate", "--model", str(tiny_model_dir), "--backend", "vllm", "--vllm_url", "http://x", "hi"])
    assert code == 2 and "runs in one process" in capsys.readouterr().err


def test_vllm_modules_import_nothing_of_vllm():
    import subprocess
    import sys

    code = ("import sys, contrastkit.vllm_backend, contrastkit.alignment.vllm_sampler, contrastkit.alignment.sampler; "
            "bad = [m for m in sys.modules if m == 'vllm' or m.startswith(('vllm.', 'trl.generation'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_repetition_penalty_and_stop_reach_the_server(tmp_path, tiny_model_dir, server, capsys):
    out = tmp_path / "o.jsonl"
    code = main(["generate", "--model", str(tiny_model_dir), "--backend", "vllm", "--vllm_url", server,
                 "--strategy", "greedy", "--repetition_penalty", "1.3", "--stop", "king", "--max_new_tokens", "5",
                 "--output", str(out), "the cat"])
    assert code == 0, capsys.readouterr().err
    (req,) = _OpenAIStandIn.requests
    assert req["repetition_penalty"] == 1.3 and req["stop"] == ["king"] and req["include_stop_str_in_output"]
    rec = _records(out)[0]
    assert rec["repetition_penalty"] == 1.3 and rec["stop"] == ["king"]
