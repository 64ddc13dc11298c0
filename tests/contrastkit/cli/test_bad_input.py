"""The bad-input catalogue of the CLI, table-driven: each case exits 2 with one line on stderr, fast.

Every row is a command line as a user types it (``{tiny}`` is a tiny random model folder, ``{tmp}`` the
working directory, which holds ``runs/amateur``, a PEFT-adapter-looking folder, and ``bad.jsonl``). Rows with
``needs_model=False`` must fail before any model is loaded: ``load_model`` is replaced by a function that
fails the test, so a check that moved after the (slow) load is caught. One row also runs through the
installed console script, imports included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from contrastkit.cli.main import main

# (id, argv, expected substring of the one error line, needs_model, extra env)
CASES = [
    ("unknown-strategy", ["generate", "x", "--strategy", "gredy"], "Did you mean 'greedy'", False, {}),
    ("out-of-range", ["generate", "x", "--strategy", "sample", "--temperature", "-1"],
     "temperature must be in (0, inf]", False, {}),
    ("empty-prompt", ["generate", "--model", "{tiny}", "  "], "prompt 1 is empty", True, {}),
    ("malformed-jsonl", ["generate", "--model", "{tiny}", "--input", "bad.jsonl"],
     "bad.jsonl:2: malformed JSON", False, {}),
    ("too-long-prompt", ["generate", "--model", "{tiny}", "the cat " * 400], "exceeds the model's context", True, {}),
    ("missing-model", ["generate", "x", "--model", "/no/such/model"], "model path '/no/such/model' does not exist",
     False, {}),
    ("missing-hub-model-offline", ["generate", "x", "--model", "some-org/some-model"],
     "HF_HUB_OFFLINE=1 forbids downloading", True, {"HF_HUB_OFFLINE": "1"}),
    ("flag-prefix", ["generate", "x", "--max_new_token", "3"],
     "unrecognized arguments: --max_new_token 3. Did you mean '--max_new_tokens'?", False, {}),
    ("flag-prefix-score", ["score", "--context", "a", "--continuation", " b", "--strat", "greedy"],
     "Did you mean '--strategy'?", False, {}),
    ("flag-prefix-strategies", ["strategies", "--js"], "unrecognized arguments: --js", False, {}),
    ("foreign-strategy-flag", ["generate", "x", "--penalty_alpha", "0.6"],
     "--penalty_alpha belongs to: contrastive", False, {}),
    ("mistyped-model-path", ["generate", "x", "--model", "runs/amateurX"],
     "model path 'runs/amateurX' does not exist. Did you mean 'runs/amateur'?", False, {}),
    ("mistyped-dot-path", ["generate", "x", "--model", "./runs/amatuer"],
     "Did you mean 'runs/amateur'?", False, {}),
    ("mistyped-amateur", ["generate", "x", "--strategy", "icd", "--amateur", "runs/amateurX"],
     "amateur path 'runs/amateurX' does not exist. Did you mean 'runs/amateur'?", False, {}),
    ("mistyped-amateur-score", ["score", "--strategy", "cd", "--amateur", "runs/amateur2", "--context", "a",
                                "--continuation", " b"], "Did you mean 'runs/amateur'?", False, {}),
    ("amateur-never-trained", ["generate", "x", "--strategy", "icd", "--amateur", "nowhere/amateur"],
     "amateur: model 'nowhere/amateur' is not a local path and not in the Hugging Face cache, and HF_HUB_OFFLINE=1",
     False, {"HF_HUB_OFFLINE": "1"}),
    ("mistyped-adapter", ["generate", "x", "--adapter", "runs/amateu"],
     "adapter path 'runs/amateu' does not exist. Did you mean 'runs/amateur'?", False, {}),
    ("unknown-shipped-config", ["generate", "x", "--config", "generat"],
     "is not a shipped config. Did you mean 'generate'?", False, {}),
    ("threads-zero", ["generate", "x", "--threads", "0"], "--threads must be in [1, inf]", False, {}),
    ("data-offline-no-copy", ["train", "dpo", "--config", "dpo_smollm2_hh", "--output_dir", "runs/d"],
     "Hub id: Anthropic/hh-rlhf (needs network). Pass a local copy with --train_file PATH", False,
     {"HF_HUB_OFFLINE": "1", "CONTRASTKIT_DATA": None}),
    ("unknown-command", ["genrate", "x"], "Did you mean 'generate'?", False, {}),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    amateur = tmp_path / "runs" / "amateur"
    amateur.mkdir(parents=True)
    (amateur / "adapter_config.json").write_text("{}")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_fast(case, workdir, tiny_model_dir, monkeypatch, capsys):
    _, argv, expected, needs_model, env = case
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    if not needs_model:
        import contrastkit.models as models

        def no_load(*a, **k):
            raise AssertionError("a model was loaded before the bad input was reported")

        monkeypatch.setattr(models, "load_model", no_load)
        monkeypatch.setattr(models, "materialize_gguf", no_load)
    argv = [a.replace("{tiny}", str(tiny_model_dir)) for a in argv]
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not list(workdir.glob("*.jsonl.*"))  # no partial output


def test_console_script_mistyped_amateur_fails_fast(workdir):
    """As a user runs it: the installed script, imports included, no Hub lookup and no retries."""
    exe = os.path.join(os.path.dirname(sys.executable), "contrastkit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run([exe, "generate", "Who wrote Hamlet?", "--strategy", "icd", "--amateur", "runs/amateurX"],
                         capture_output=True, text=True, env=env, timeout=60, cwd=workdir)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "contrastkit generate: error: amateur path 'runs/amateurX' does not exist. Did you mean 'runs/amateur'?"]
    assert elapsed < 10 * 3, f"took {elapsed:.1f} s"  # 10 s on an idle machine; x3 for the shared CI box
