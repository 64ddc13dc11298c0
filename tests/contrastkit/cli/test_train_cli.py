"""``contrastkit train dpo|hypo|treg``: bad input before any model load, YAML + flags, resume, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def _dpo_flags(tiny_model_dir, data, out, steps=2):
    flags = base_flags(tiny_model_dir, data, out, steps=steps)
    i = flags.index("--hypo_max_new_tokens")
    del flags[i: i + 2]
    return flags


def test_export_merges_the_adapter_and_loads_everywhere(tmp_path, tiny_model_dir, capsys):
    """train dpo -> train export: plain transformers loads the merged safetensors (no peft) and its logits equal
    base + adapter; contrastkit generate --model OUT greedy-decodes what base --adapter DIR decodes."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from contrastkit.cli.main import main as ck

    data = write_pairs(tmp_path / "pairs.jsonl")
    adapter, merged = tmp_path / "run", tmp_path / "merged"
    assert ck(["train", "dpo", *_dpo_flags(tiny_model_dir, data, adapter, steps=2), "--learning_rate", "5e-2"]) == 0
    assert ck(["train", "export", "--adapter", str(adapter), "--output_dir", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    ids = torch.tensor([[5, 17, 40, 9, 33, 7]])
    plain = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
        merged_logits = plain(ids).logits
    assert (with_adapter - base_logits).abs().max() > 1e-3  # the adapter changes the model
    torch.testing.assert_close(merged_logits, with_adapter, atol=1e-5, rtol=1e-5)
    outs = {}
    for name, flags in (("merged", ["--model", str(merged)]), ("adapter", ["--model", str(tiny_model_dir),
                                                                            "--adapter", str(adapter)])):
        path = tmp_path / f"{name}.jsonl"
        assert ck(["generate", *flags, "the cat saw", "--max_new_tokens", "6", "--output", str(path)]) == 0
        outs[name] = json.loads(path.read_text().splitlines()[0])["token_ids"]
    assert outs["merged"] == outs["adapter"]
    capsys.readouterr()
    assert ck(["train", "export", "--adapter", str(adapter), "--output_dir", str(merged)]) == 2  # not empty
    assert "already exists and is not empty" in capsys.readouterr().err
    assert ck(["train", "export", "--adapter", str(tmp_path), "--output_dir", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def _repo_layout(root: Path) -> Path:
    """A dataset repo folder as on the Hub, without a loading script: data files + README with two configs."""
    for config, n in (("small", 3), ("big", 6)):
        for split, rows in (("train", n), ("test", n - 1)):
            write_pairs((root / config).mkdir(parents=True, exist_ok=True) or root / config / f"{split}.jsonl", n=rows)
    (root / "README.md").write_text(
        "---\nconfigs:\n" + "".join(
            f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.jsonl\n"
            f"  - split: test\n    path: {c}/test.jsonl\n" for c in ("small", "big")) + "---\n# toy pairs\n")
    return root


def test_dataset_repo_layout_and_save_to_disk_with_trl_flag_names(tmp_path, tiny_model_dir):
    """trl's names (--model_name_or_path, --dataset_name, --dataset_config, --dataset_train_split) on a local
    script-free dataset repo (datasets.load_dataset) and on a save_to_disk folder, offline."""
    import datasets

    from contrastkit.alignment.configs import ContrastDPOConfig
    from contrastkit.alignment.data import load_preference_data
    from contrastkit.cli.train_common import parse_configs, run_training

    repo = _repo_layout(tmp_path / "toy-pairs")
    assert len(load_preference_data(repo, config="small", split="test")) == 2
    assert len(load_preference_data(repo, config="big", split="train")) == 6
    assert len(load_preference_data(repo, config="big", split="test")) == 5
    flags = _dpo_flags(tiny_model_dir, "x", tmp_path / "out", steps=1)
    flags[flags.index("--model")] = "--model_name_or_path"
    i = flags.index("--train_file")
    flags[i: i + 2] = ["--dataset_name", str(repo), "--dataset_config", "small", "--dataset_train_split", "train"]
    summary = run_training("dpo", *parse_configs("t", ContrastDPOConfig, flags))
    assert summary["train_rows"] == 3 and summary["model"] == str(tiny_model_dir)

    disk = tmp_path / "disk"
    datasets.DatasetDict({"train": load_preference_data(repo, config="big", split="train")}).save_to_disk(str(disk))
    flags[flags.index("--dataset_name") + 1] = str(disk)
    script, _ = parse_configs("t", ContrastDPOConfig, flags)
    assert len(load_preference_data(script.train_file, split=script.train_split)) == 6


@pytest.mark.parametrize("extra, match", [
    (["--dataset_name", "nobody-here/no-such-dataset"], "could not be loaded with datasets.load_dataset"),
    (["--dataset_name", "no/such/path.jsonl"], "does not exist"),
    (["--model_name_or_path", "a", "--model", "b"], "name the same option; give one"),
    (["--dataset_train_split", "nope"], "split 'nope'"),
])
def test_hub_and_alias_errors_exit_2(tmp_path, tiny_model_dir, no_model_load, capsys, extra, match):
    from contrastkit.cli.train import main

    repo = _repo_layout(tmp_path / "toy-pairs")
    flags = _dpo_flags(tiny_model_dir, repo, tmp_path / "out")
    if "--dataset_name" in extra:
        i = flags.index("--train_file")
        del flags[i: i + 2]
    if "--model" in extra:
        i = flags.index("--model")
        del flags[i: i + 2]
    assert main(["dpo", *flags, "--dataset_config", "small", *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # datasets may draw bars
    assert len(err) == 1 and err[0].startswith("contrastkit train dpo: error:") and match in err[0], err


def test_hypo_logs_parts_heldout_kl_and_dropped_rows(tmp_path, tiny_model_dir, capsys):
    """HyPO: the summary names the DPO and KL parts (loss = dpo part + kl part), each evaluation logs the held-out
    reverse KL, and rows dropped in data preparation are reported with count and reason."""
    from contrastkit.alignment.configs import HyPOConfig
    from contrastkit.cli.train_common import parse_configs, run_training

    data = write_pairs(tmp_path / "pairs.jsonl", rejected="  ")  # last row invalid
    evals = write_pairs(tmp_path / "eval.jsonl", n=4)
    flags = base_flags(tiny_model_dir, data, tmp_path / "out", steps=2)
    summary = run_training("hypo", *parse_configs("t", HyPOConfig, [
        *flags, "--eval_file", str(evals), "--eval_strategy", "steps", "--eval_steps", "1", "--hypo_lambda", "0.5",
        "--skip_invalid_rows", "true", "--per_device_eval_batch_size", "2"]))
    assert summary["dropped_rows"] == {"train": {"count": 1, "reasons": {"empty 'rejected' response": 1}, "rows": [8]}}
    assert "dropped 1 rows of" in capsys.readouterr().err
    assert set(summary["loss_parts"]) >= {"hypo/dpo_loss", "hypo/kl_loss", "hypo/kl"}
    train_logs = [h for h in summary["log_history"] if "loss" in h]
    for h in train_logs:
        assert h["loss"] == pytest.approx(h["hypo/dpo_loss"] + h["hypo/kl_loss"], rel=1e-5, abs=1e-6)
    evals_logged = [h for h in summary["log_history"] if "eval_loss" in h]
    assert len(evals_logged) == 2 and all("eval_hypo/kl" in h for h in evals_logged)
    assert evals_logged[0]["eval_hypo/kl"] != 0.0  # after one step the policy has moved on held-out prompts


def test_dataset_dir_selects_a_subset_folder_and_the_hh_configs_use_harmless_base(tmp_path):
    """Anthropic/hh-rlhf keeps its subsets as folders (harmless-base/, helpful-base/), not configurations:
    --dataset_dir reaches datasets.load_dataset(data_dir=...); the shipped *_hh configs ask for harmless-base."""
    from contrastkit.alignment.configs import ContrastDPOConfig
    from contrastkit.alignment.data import load_preference_data
    from contrastkit.cli.common import resolve_config
    from contrastkit.cli.train_common import parse_configs

    repo = tmp_path / "hh-like"
    for sub, n in (("harmless-base", 2), ("helpful-base", 5)):
        (repo / sub).mkdir(parents=True)
        rows = [{"prompt": f"q{i} {sub}", "chosen": " yes", "rejected": " no"} for i in range(n)]
        (repo / sub / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (repo / "README.md").write_text("toy\n")
    assert len(load_preference_data(repo, split="train", data_dir="harmless-base")) == 2
    assert len(load_preference_data(repo, split="train", data_dir="helpful-base")) == 5
    script, _ = parse_configs("t", ContrastDPOConfig, ["--config", str(resolve_config("dpo_smollm2_hh")),
                                                       "--train_file", str(repo)])
    assert script.dataset_dir == "harmless-base"
    assert len(load_preference_data(script.train_file, split="train", data_dir=script.dataset_dir)) == 2
