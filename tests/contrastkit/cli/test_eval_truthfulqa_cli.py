"""`contrastkit eval truthfulqa --mode mc,gen`: each mode gets its own folder."""

from __future__ import annotations

import json

import pytest

from contrastkit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_modes_write_two_folders(capsys, tmp_path, tiny_model_dir, shared_data):
    argv = ["eval", "truthfulqa", "--mode", "mc,gen", "--model", str(tiny_model_dir), "--limit", "1",
            "--judge_truth", str(tiny_model_dir), "--judge_info", str(tiny_model_dir), "--max_new_tokens", "3",
            "--preset", "zero-shot", "--data", str(shared_data / "truthfulqa/v1/TruthfulQA.csv"),
            "--output_dir", str(tmp_path), "--quiet"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    mc = json.loads((tmp_path / "mc" / "summary.json").read_text())
    gen = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert "mc1" in json.dumps(mc["strategies"]["greedy"]["metrics"]).lower()
    assert "bleu_acc" in gen["strategies"]["greedy"]["metrics"]
    assert not (tmp_path / "summary.json").exists()
    assert out.count("| greedy |") >= 2  # both reports printed


def test_amateur_flag_reaches_contrastive_strategies(capsys, tmp_path, tiny_model_dir, shared_data):
    argv = ["eval", "truthfulqa", "--model", str(tiny_model_dir), "--strategies", "cd", "--amateur",
            str(tiny_model_dir), "--limit", "1", "--preset", "zero-shot",
            "--data", str(shared_data / "truthfulqa/hub_013686a/mc_task.json"), "--output_dir", str(tmp_path), "--quiet"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"amateur={tiny_model_dir}" in out
    assert "warning: cd-" in err and "not log-probs" in err  # the run's warnings reach stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    (label,) = summary["strategies"]
    assert label.startswith("cd-") and summary["strategies"][label]["n_items"] == 1
