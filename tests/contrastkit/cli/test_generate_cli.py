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
