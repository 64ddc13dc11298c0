"""``contrastkit train dpo|hypo|treg``: bad input before any model load, YAML + flags, resume, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORDS = "the cat dog bird saw a red blue king queen river city".split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_pairs(path: Path, n=8, **override):
    import random

    rng = random.Random(0)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with open(path, "w") as f:
        for i in range(n):
            row = {"prompt": words(4), "chosen": " " + words(3), "rejected": " " + words(2)}
            if i == n - 1:
                row.update(override)
                row = {k: v for k, v in row.items() if v is not None}
            f.write(json.dumps(row) + "\n")
    return path


def base_flags(tiny_model_dir, train_file, out_dir, steps=2):
    return ["--model", str(tiny_model_dir), "--train_file", str(train_file), "--output_dir", str(out_dir),
            "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--learning_rate", "5e-3",
            "--logging_steps", "1", "--gradient_checkpointing", "false", "--lora_r", "4",
            "--lora_target_modules", "q_proj,v_proj", "--report_to", "none", "--disable_tqdm", "true",
            "--max_length", "64", "--hypo_max_new_tokens", "4"]


@pytest.fixture
def no_model_load(monkeypatch):
    import contrastkit.models

    def boom(*a, **k):
        raise AssertionError("model loaded before input validation")

    monkeypatch.setattr(contrastkit.models, "load_model", boom)


@pytest.mark.parametrize("method, extra, row, match", [
    ("dpo", [], {"prompt": None}, "missing column 'prompt'"),
    ("dpo", [], {"chosen": None}, "missing column 'chosen'"),
    ("dpo", [], {"rejected": "   "}, "empty 'rejected' response"),
    ("dpo", ["--max_length", "8"], {"prompt": " ".join(["king"] * 12)}, "not shorter than max_length=8"),
    ("hypo", ["--hypo_lambda", "-1"], {}, r"hypo_lambda must be in \[0, inf\]"),
    ("hypo", ["--hypo_num_samples", "1"], {}, "hypo_num_samples must be >= 2"),
    ("treg", ["--treg_alpha", "-0.5"], {}, "treg_alpha must be in"),
    ("dpo", ["--loss", "dpoo"], {}, "unknown preference loss 'dpoo'. Did you mean 'dpo'"),
])
def test_bad_input_exits_2_before_model_load(tmp_path, tiny_model_dir, no_model_load, capsys, method, extra, row,
                                            match):
    from contrastkit.cli.train import main

    data = write_pairs(tmp_path / "pairs.jsonl", **row)
    flags = [f for f in base_flags(tiny_model_dir, data, tmp_path / "out") if True]
    if method != "hypo":
        i = flags.index("--hypo_max_new_tokens")
        del flags[i: i + 2]
    assert main([method, *flags, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"contrastkit train {method}: error:") and len(err.splitlines()) == 1
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "out" / "train_summary.json").exists()


def test_unknown_yaml_key_and_flag(tmp_path, tiny_model_dir, no_model_load, capsys):
    from contrastkit.cli.train import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text("hypo_lamda: 0.1\n")
    assert main(["hypo", "--config", str(cfg), "--train_file", "x.jsonl"]) == 2
    assert "Did you mean 'hypo_lambda'" in capsys.readouterr().err
    try:
        rc = main(["treg", "--treg_alpah", "0.1"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and "Did you mean '--treg_alpha'" in capsys.readouterr().err


class _Kill:
    """Simulates a crash right after the checkpoint at ``at`` steps was written."""

    def __init__(self, at):
        from transformers import TrainerCallback

        at_step = at

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == at_step:
                    raise KeyboardInterrupt

        self.callback = CB()


@pytest.mark.parametrize("method", ["treg", "hypo"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_model_dir, method):
    from safetensors.torch import load_file

    from contrastkit.alignment.configs import HyPOConfig, TREGConfig
    from contrastkit.cli.train_common import parse_configs, run_training

    data = write_pairs(tmp_path / "pairs.jsonl")
    cls = {"treg": TREGConfig, "hypo": HyPOConfig}[method]

    def configs(out):
        flags = base_flags(tiny_model_dir, data, out, steps=4)
        if method != "hypo":
            i = flags.index("--hypo_max_new_tokens")
            del flags[i: i + 2]
        return parse_configs("t", cls, [*flags, "--save_steps", "2", "--resume_from_checkpoint", "auto",
                                        "--treg_alpha" if method == "treg" else "--hypo_lambda", "0.5"])

    full = run_training(method, *configs(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        run_training(method, *configs(tmp_path / "cut"), trainer_kwargs={"callbacks": [_Kill(2).callback]})
    assert (tmp_path / "cut" / "checkpoint-2").is_dir() and not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = run_training(method, *configs(tmp_path / "cut"))
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["global_step"] == full["global_step"] == 4
    loss = lambda s: [(h["step"], h["loss"]) for h in s["log_history"] if "loss" in h]  # noqa: E731
    assert len(loss(full)) == 4 and loss(resumed) == loss(full)  # steps 1-2 from the checkpoint, 3-4 continue
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    if method == "treg":
        assert resumed["treg_cache"]["train"]["cached"] is True  # rewards reused, not recomputed


def test_two_processes_under_accelerate_launch(tmp_path, tiny_model_dir):
    """2 gloo processes on CPU: accelerate's multi-process launcher (torchrun) with ``--use_cpu true``.

    HyPO is the demanding case (an extra policy forward on fresh samples inside the DDP step).
    """
    data = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    flags = base_flags(tiny_model_dir, data, out, steps=2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "contrastkit.cli.main", "train", "hypo", *flags, "--use_cpu", "true", "--hypo_lambda", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_step"] == 2
    logs = [h for h in summary["log_history"] if "loss" in h]
    assert logs[0]["hypo/kl"] == 0.0 and logs[1]["hypo/kl"] != 0.0
    assert (out / "adapter_model.safetensors").exists()


def test_full_finetune_treg_uses_separate_reference(tmp_path, tiny_model_dir):
    """use_peft false: trl loads a frozen reference from the model path; step 1 is ln 2, weights move."""
    import math

    from contrastkit.alignment.configs import TREGConfig
    from contrastkit.cli.train_common import parse_configs, run_training

    data = write_pairs(tmp_path / "pairs.jsonl")
    flags = base_flags(tiny_model_dir, data, tmp_path / "out", steps=2)
    i = flags.index("--hypo_max_new_tokens")
    del flags[i: i + 2]
    summary = run_training("treg", *parse_configs("t", TREGConfig, [*flags, "--use_peft", "false"]))
    logs = [h for h in summary["log_history"] if "loss" in h]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and logs[0]["treg/reg"] == 0.0
    assert logs[1]["treg/reg"] != 0.0
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("method", ["dpo", "hypo", "treg"])
def test_shipped_yaml_configs_parse_and_flags_override(tmp_path, method, shared_data):
    from contrastkit.alignment.configs import ContrastDPOConfig, HyPOConfig, TREGConfig
    from contrastkit.cli.common import CONFIG_DIR
    from contrastkit.cli.train_common import parse_configs

    path = CONFIG_DIR / f"{method}_smollm2_hh.yaml"  # shipped in the package, passed by name
    assert path.read_text().splitlines()[0] == f"# contrastkit train {method} --config {path.stem}"
    cls = {"dpo": ContrastDPOConfig, "hypo": HyPOConfig, "treg": TREGConfig}[method]
    hh = str(shared_data / "hh_rlhf" / "harmless-base_test.jsonl.gz")
    script, cfg = parse_configs("t", cls, ["--config", path.stem, "--train_file", hh, "--output_dir", str(tmp_path),
                                           "--max_steps", "3"])
    assert cfg.max_steps == 3 and cfg.save_steps == 20 and cfg.bf16 is False  # flag beats YAML, YAML beats default
    assert script.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"] and script.lora_r == 8
