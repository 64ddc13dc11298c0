"""`contrastkit generate` / `strategies` / `score`: happy paths and every bad input -> one line, exit 2."""

import json
import os
import subprocess
import sys

import pytest

from contrastkit.cli.main import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_strategies_lists_parameters(capsys):
    code, out, _ = run(["strategies"], capsys)
    assert code == 0 and "greedy:" in out and "--temperature" in out and "default 4" in out
    code, out, _ = run(["strategies", "--json", "sample"], capsys)
    assert json.loads(out)["sample"]["parameters"]["top_p"]["default"] == 1.0


def test_generate_file_to_jsonl(tiny_model_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "the cat saw"}, {"messages": [{"role": "user", "content": "red"}]}, {"input_ids": [5, 6, 7]},
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out),
                        "--strategy", "greedy,sample", "--top_k", "3", "--max_new_tokens", "5",
                        "--min_new_tokens", "5"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and {r["strategy"] for r in records} == {"greedy", "sample"}
    first = records[0]
    assert first["index"] == 0 and len(first["token_ids"]) == 5 and "time_s" in first and "text" in first
    assert records[1]["params"]["top_k"] == 3
    assert records[4]["prompt_tokens"] == 3  # input_ids used verbatim


def test_yaml_config_and_flag_override(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nstrategy: sample\ntemperature: 0.5\nmax_new_tokens: 3\n")
    out = tmp_path / "o.jsonl"
    code, _, err = run(["generate", "--config", str(cfg), "--max_new_tokens", "4", "--min_new_tokens", "4",
                        "--output", str(out), "the cat"], capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["strategy"] == "sample" and rec["params"]["temperature"] == 0.5 and rec["new_tokens"] == 4


BAD = [
    (["generate", "x", "--strategy", "gredy"], "Did you mean 'greedy'"),
    (["generate", "x", "--strategy", "sample", "--temperature", "-1"], "temperature must be in"),
    (["generate", "x", "--strategy", "sample", "--temprature", "1"], "Did you mean '--temperature'"),
    (["generate", "x", "--max_new_tokens", "abc"], "invalid int value"),
    (["generate"], "no prompt given"),
    (["generate", "x", "--model", "/no/such/model"], "does not exist"),
    (["generate", "x", "--model", "smolm2"], "Did you mean 'smollm2'"),
    (["generate", "x", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
]


@pytest.mark.parametrize("argv, match", BAD)
def test_bad_input_exit_2_one_line(argv, match, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_jsonl_reports_line(tiny_model_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "ok"}\n\n{"prompt": oops}\n')
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "--input", str(inp)], capsys)
    assert code == 2 and "in.jsonl:3: malformed JSON" in err


def test_empty_prompt_and_too_long_prompt_leave_no_output(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "  ", "--output", str(out)], capsys)
    assert code == 2 and "prompt 1 is empty" in err
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "the cat " * 400, "--output", str(out)], capsys)
    assert code == 2 and "exceeds the model's context" in err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_interrupt_leaves_no_partial_output(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import contrastkit.generation as gen

    calls = {"n": 0}
    real = gen.generate

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "generate", flaky)
    out = tmp_path / "out.jsonl"
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "the cat", "--strategy", "greedy,sample",
                        "--output", str(out), "--max_new_tokens", "3"], capsys)
    assert code == 130 and not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_score_command(tiny_model_dir, capsys):
    code, out, err = run(["score", "--model", str(tiny_model_dir), "--context", "the cat",
                          "--continuation", " saw", "--continuation", " red dog"], capsys)
    assert code == 0, err
    res = json.loads(out)["results"]
    assert len(res) == 2 and abs(res[1]["sum"] - sum(res[1]["token_scores"])) < 1e-9


@pytest.mark.integration
def test_console_script_on_embedded_model(tmp_path):
    """The installed `contrastkit` script, default model (embedded SmolLM2), as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "contrastkit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([exe, "generate", "The capital of France is", "--max_new_tokens", "8"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "Paris" in ok.stdout
    bad = subprocess.run([exe, "generate", "x", "--strategy", "beam", "--num_beams", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "num_beams must be in [1, inf]" in bad.stderr and "Traceback" not in bad.stderr


def test_stream_prints_the_generated_text(tiny_model_dir, capsys):
    code, streamed, err = run(["generate", "--model", str(tiny_model_dir), "the cat saw", "--stream",
                               "--max_new_tokens", "6", "--min_new_tokens", "6"], capsys)
    assert code == 0, err
    code, plain, _ = run(["generate", "--model", str(tiny_model_dir), "the cat saw",
                          "--max_new_tokens", "6", "--min_new_tokens", "6"], capsys)
    assert streamed.strip() == plain.strip() and plain.strip()
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "a", "b", "--stream"], capsys)
    assert code == 2 and "--stream needs exactly one prompt" in err


def test_shipped_generate_yaml_is_valid(tiny_model_dir, tmp_path, capsys):

    cfg = "generate"  # a shipped config, by name
    out = tmp_path / "o.jsonl"
    code, _, err = run(["generate", "--config", cfg, "--model", str(tiny_model_dir), "--max_new_tokens", "3",
                        "--output", str(out), "the cat"], capsys)
    assert code == 0, err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["strategy"] for r in recs] == ["greedy", "sample"] and recs[1]["params"]["top_p"] == 0.95


def test_unknown_yaml_key_has_did_you_mean(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_new_token: 3\n")
    code, _, err = run(["generate", "x", "--config", str(cfg)], capsys)
    assert code == 2 and "unknown key 'max_new_token'. Did you mean 'max_new_tokens'" in err


def test_accelerate_launch_two_processes_equals_one(tiny_model_dir, tmp_path):
    """One model replica per process under `accelerate launch`: the merged output equals a 1-process run."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the cat", "a red dog", "once upon", "the king"]))
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["generate", "--model", str(tiny_model_dir), "--input", str(inp), "--max_new_tokens", "5",
              "--min_new_tokens", "5", "--batch_size", "1"]
    one = subprocess.run([os.path.join(bindir, "contrastkit"), *common, "--output", str(tmp_path / "one.jsonl")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([os.path.join(bindir, "accelerate"), "launch", "--cpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "contrastkit.cli.main", *common, "--output", str(tmp_path / "two.jsonl")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]

    def load(name):
        return [(r["index"], r["token_ids"]) for r in map(json.loads, (tmp_path / name).read_text().splitlines())]

    assert load("one.jsonl") == load("two.jsonl") and len(load("two.jsonl")) == 4


# --- newcomer experience (issue 16) ---------------------------------------------------------------


def test_output_file_follows_umask(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    old = os.umask(0o022)
    try:
        code, _, err = run(["generate", "--model", str(tiny_model_dir), "the cat", "--max_new_tokens", "2",
                            "--output", str(out)], capsys)
        assert code == 0, err
        assert out.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.umask(0o027)
        code, _, err = run(["score", "--model", str(tiny_model_dir), "--context", "the", "--continuation", " cat",
                            "--output", str(out)], capsys)
        assert code == 0, err
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_score_reports_sum_mean_and_count_against_a_reference(tiny_model_dir, capsys):
    """sum / mean / num_tokens of the CLI equal a from-scratch log-prob computation and the API's to_dict()."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out, err = run(["score", "--model", str(tiny_model_dir), "--context", "the cat",
                          "--continuation", " saw", "--continuation", " red dog was"], capsys)
    assert code == 0, err
    res = json.loads(out)["results"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = tok("the cat", add_special_tokens=False)["input_ids"]
    for r, cont in zip(res, [" saw", " red dog was"]):
        cont_ids = tok("the cat" + cont, add_special_tokens=False)["input_ids"][len(ctx):]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont_ids])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        ref = [lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont_ids)]
        assert r["num_tokens"] == len(cont_ids) == len(r["token_scores"])
        assert abs(r["sum"] - sum(ref)) < 1e-4
        assert abs(r["mean"] - sum(ref) / len(ref)) < 1e-4
    assert res[1]["num_tokens"] > res[0]["num_tokens"] >= 1  # the two differ, so sum and mean can disagree

    import contrastkit
    from contrastkit.models import load_model

    m, t = load_model(str(tiny_model_dir))
    api = contrastkit.score(m, t, "the cat", [" saw", " red dog was"])[0]
    for r, s in zip(res, api):
        assert set(s.to_dict()) == set(r) - {"continuation"}
        assert s.num_tokens == r["num_tokens"] and abs(s.sum - r["sum"]) < 1e-6 and abs(s.mean - r["mean"]) < 1e-6
    _, help_text, _ = run(["score", "--help"], capsys)
    assert "MC metrics" in help_text and "rank by the sum" in help_text.replace("\n", " ").replace("  ", " ")


def test_threads_flag_reaches_torch(tiny_model_dir, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        code, _, err = run(["generate", "--model", str(tiny_model_dir), "x", "--max_new_tokens", "1",
                            "--threads", "3"], capsys)
        assert code == 0, err
        assert torch.get_num_threads() == 3
        code, _, err = run(["score", "--model", str(tiny_model_dir), "--context", "a", "--continuation", " b",
                            "--threads", "2"], capsys)
        assert code == 0 and torch.get_num_threads() == 2
        from contrastkit.alignment.configs import ContrastDPOConfig
        from contrastkit.cli.train_common import parse_configs

        parse_configs("t", ContrastDPOConfig, ["--train_file", "p.jsonl", "--output_dir", "o", "--threads", "4"])
        assert torch.get_num_threads() == 4  # train takes it through the same parser
    finally:
        torch.set_num_threads(before)


def test_batched_generate_shows_progress_per_token(tiny_model_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the cat", "a dog saw the", "red"]))
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "--input", str(inp), "--output",
                        str(tmp_path / "o.jsonl"), "--batch_size", "2", "--max_new_tokens", "5",
                        "--min_new_tokens", "5"], capsys)
    assert code == 0
    assert "generate[greedy]" in err and "15/15" in err and "tok" in err  # 3 prompts x 5 tokens, not 2 batches


def test_token_progress_counts_tokens_and_fills_early_stopped_batches():
    import torch

    from contrastkit.cli.common import token_progress

    bar = token_progress(num_prompts=3, max_new_tokens=4, batch_size=2)
    ids = torch.tensor([[1, 2], [3, 4]])
    seen = []
    for _ in range(2):  # batch 1 (2 rows) stops after 2 of 4 tokens
        ids = torch.cat([ids, torch.tensor([[5], [6]])], 1)
        assert not bar(ids, None).any()
        seen.append(bar.bar.n)
    ids = torch.tensor([[7, 8, 9, 10, 11]])  # batch 2 (1 row), a longer prompt: a new batch, not a step
    for _ in range(4):
        ids = torch.cat([ids, torch.tensor([[5]])], 1)
        bar(ids, None)
        seen.append(bar.bar.n)
    bar.close()
    assert seen == [2, 4, 9, 10, 11, 12] and bar.bar.n == bar.bar.total == 12


def test_help_says_strategy_flags_are_hidden(capsys):
    code, out, _ = run(["generate", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "Strategy flags are hidden" in flat and "contrastkit generate --strategy X --help" in flat
    assert "--penalty_alpha" not in out
    code, out, _ = run(["generate", "--strategy", "contrastive", "--help"], capsys)
    assert code == 0 and "--penalty_alpha" in out and "--threads" in out and "--verbose" in out


def test_configs_command_lists_and_prints_shipped_configs(capsys):
    code, out, _ = run(["configs"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith((" ", "use:"))]
    assert {"generate", "dpo_smollm2_hh", "hypo_smollm2_hh", "treg_smollm2_hh", "induce_smollm2"} <= set(names)
    code, out, _ = run(["configs", "dpo_smollm2_hh"], capsys)
    assert code == 0 and "train_file: Anthropic/hh-rlhf" in out
    code, _, err = run(["configs", "dpo_smollm"], capsys)
    assert code == 2 and "Did you mean 'dpo_smollm2_hh'" in err


def test_hub_data_ids_resolve_to_the_local_copy(tmp_path, monkeypatch):
    """A shipped config's Hub id becomes $CONTRASTKIT_DATA/<file>; offline without a copy it fails at once."""
    from contrastkit.alignment.configs import ContrastDPOConfig
    from contrastkit.cli.train_common import parse_configs
    from contrastkit.errors import UsageError
    from contrastkit.eval.truthfulqa_tasks import TruthfulQAConfig

    (tmp_path / "hh_rlhf").mkdir()
    local = tmp_path / "hh_rlhf" / "harmless-base_test.jsonl.gz"
    local.write_bytes(b"")
    monkeypatch.setenv("CONTRASTKIT_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script, _ = parse_configs("t", ContrastDPOConfig, ["--config", "dpo_smollm2_hh", "--output_dir", str(tmp_path)])
    assert script.train_file == str(local)
    from contrastkit.cli.common import build_dataclass

    with pytest.raises(UsageError, match=r"TruthfulQA multiple-choice questions.*Hub id: truthfulqa/truthful_qa.*"
                                         r"--data PATH, or set CONTRASTKIT_DATA to a folder holding "
                                         r"truthfulqa/hub_013686a/mc_task.json"):
        build_dataclass(TruthfulQAConfig, {})  # the class default is the Hub id: checked like a given value
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert build_dataclass(TruthfulQAConfig, {}).data == "truthfulqa/truthful_qa"  # online: left to the loader
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert build_dataclass(TruthfulQAConfig, {"data": "truthfulqa"}).data == "truthfulqa"  # a short name is a path


def test_quiet_by_default_verbose_shows_warnings():
    import warnings

    import datasets  # imported before quieting, as in a process that already loaded it

    from contrastkit.cli.common import quiet_third_party

    datasets.enable_progress_bars()
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        quiet_third_party(verbose=False)
        warnings.warn("old api", FutureWarning)
        warnings.warn("'pin_memory' argument is set as true but no accelerator is found", UserWarning)
        warnings.warn("a real problem", UserWarning)
    assert [str(w.message) for w in seen] == ["a real problem"]
    import datasets

    assert not datasets.is_progress_bar_enabled()  # trl's per-row map() bars
    datasets.enable_progress_bars()
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        quiet_third_party(verbose=True)
        warnings.warn("old api", FutureWarning)
    assert len(seen) == 1


def test_faiss_training_points_warning_hidden_with_identical_centroids(tmp_path):
    """faiss prints its warning from C++; quieting (installed before faiss is imported, as `contrastkit` does)
    only lowers min_points_per_centroid, so the centroids equal stock faiss's."""
    pytest.importorskip("faiss")
    code = (
        "import sys, numpy as np\n"
        "from contrastkit.cli.common import quiet_third_party\n"
        "quiet_third_party(False)\n"
        "import faiss\n"
        "x = np.random.RandomState(0).randn(100, 8).astype('float32')\n"
        "q = faiss.Kmeans(8, 5, niter=10, seed=3); q.train(x)\n"
        "sys.stderr.write('MARK\\n'); sys.stderr.flush()\n"
        "b = faiss.Kmeans.__mro__[1](8, 5, niter=10, seed=3); b.train(x)\n"
        "print(bool(faiss.Kmeans._contrastkit_quiet), np.array_equal(q.centroids, b.centroids))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True"]
    before, after = res.stderr.split("MARK", 1)
    assert "training points" not in before and "training points" in after  # stock faiss still warns
