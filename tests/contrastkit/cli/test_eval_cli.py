import json

import pytest

from contrastkit.cli.main import main


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_strategy_exits_2_with_did_you_mean(capsys, tmp_path, shared_data):
    code, _, err = _run(capsys, ["eval", "truthfulqa", "--strategies", "gredy", "--output_dir", str(tmp_path),
                                 "--data", str(shared_data / "truthfulqa/hub_013686a/mc_task.json")])
    assert code == 2 and "Did you mean 'greedy'" in err and "Traceback" not in err


def test_bad_inputs_exit_2(capsys, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q"}]')
    code, _, err = _run(capsys, ["eval", "truthfulqa", "--model", str(tiny_model_dir), "--data", str(bad),
                                 "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "bad.json: item 1" in err
    code, _, err = _run(capsys, ["eval", "truthfulqa", "--preset", "literall", "--output_dir", str(tmp_path),
                                 "--data", str(bad)])
    assert code == 2 and "Did you mean 'literal'" in err
    code, _, err = _run(capsys, ["eval", "open-ended", "--strategy_args", "{oops", "--output_dir", str(tmp_path),
                                 "--data", str(bad)])  # a local file: the default Hub id fails offline first
    assert code == 2 and "--strategy_args is not valid JSON" in err
    code, _, err = _run(capsys, ["eval", "open-ended", "--max_new_tokens", "0", "--output_dir", str(tmp_path)])
    assert code == 2 and "max_new_tokens must be in [1, inf]" in err
    code, _, err = _run(capsys, ["eval", "truthfulqa", "--mode", "mcq", "--output_dir", str(tmp_path)])
    assert code == 2 and "Did you mean 'mc'" in err


def test_truthfulqa_cli_end_to_end_and_resume(capsys, tmp_path, tiny_model_dir, shared_data):
    argv = ["eval", "truthfulqa", "--model", str(tiny_model_dir), "--strategies", "greedy,sample",
            "--strategy_args", '{"sample": {"temperature": 0.7}}', "--limit", "2", "--preset", "zero-shot",
            "--data", str(shared_data / "truthfulqa/v1/TruthfulQA.csv"), "--output_dir", str(tmp_path), "--quiet"]
    code, out, _ = _run(capsys, argv)
    summary = json.loads((tmp_path / "summary.json").read_text())
    sample = next(k for k in summary["strategies"] if k.startswith("sample-"))  # label: name + parameter hash
    assert code == 0 and "| greedy | greedy | - |" in out and f"| {sample} | sample | temperature=0.7 |" in out
    assert summary["task_config"]["preset"] == "zero-shot" and summary["strategies"]["greedy"]["n_items"] == 2
    # plain-rule scores do not depend on sampling parameters
    assert summary["strategies"]["greedy"]["metrics"] == summary["strategies"][sample]["metrics"]
    before = (tmp_path / "records/greedy.jsonl").read_text()
    assert _run(capsys, argv)[0] == 0  # resumed: nothing recomputed, file unchanged
    assert (tmp_path / "records/greedy.jsonl").read_text() == before


@pytest.mark.parametrize("mode", ["gen"])
def test_truthfulqa_generation_cli(capsys, tmp_path, tiny_model_dir, shared_data, mode):
    argv = ["eval", "truthfulqa", "--mode", mode, "--model", str(tiny_model_dir), "--limit", "2",
            "--judge_truth", str(tiny_model_dir), "--judge_info", str(tiny_model_dir),
            "--max_new_tokens", "6", "--data", str(shared_data / "truthfulqa/v1/TruthfulQA.csv"),
            "--output_dir", str(tmp_path), "--quiet"]
    code, out, _ = _run(capsys, argv)
    assert code == 0 and "bleu_acc" in out
    recs = [json.loads(x) for x in (tmp_path / "records/greedy.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all("Q:" not in r["answer"] and "rougeL_acc" in r for r in recs)
    assert all(0 < r["true_prob"] < 1 and r["true"] == float(r["true_prob"] > 0.5) for r in recs)
    metrics = json.loads((tmp_path / "summary.json").read_text())["strategies"]["greedy"]["metrics"]
    assert metrics["true_info"] == sum(r["true"] * r["info"] for r in recs) / 2


def test_cli_adapter_and_data_changes_are_refused_limit_is_not(capsys, tmp_path, tiny_model_dir, shared_data):
    """CLI wiring: --adapter reaches the fingerprint; --limit/--batch_size/--seed do not (MC)."""
    import shutil

    from peft import LoraConfig, get_peft_model

    from contrastkit.models import load_model

    base, _ = load_model(str(tiny_model_dir))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter")
    data = tmp_path / "mc.json"
    shutil.copy(shared_data / "truthfulqa/hub_013686a/mc_task.json", data)
    argv = ["eval", "truthfulqa", "--model", str(tiny_model_dir), "--data", str(data), "--preset", "zero-shot",
            "--output_dir", str(tmp_path / "o"), "--quiet"]
    assert _run(capsys, argv + ["--limit", "1"])[0] == 0
    code, _, err = _run(capsys, argv + ["--limit", "2", "--batch_size", "3", "--seed", "5"])
    assert code == 0, err  # extended in place
    recs = (tmp_path / "o/records/greedy.jsonl").read_text().splitlines()
    assert len(recs) == 2
    code, _, err = _run(capsys, argv + ["--limit", "2", "--adapter", str(tmp_path / "adapter")])
    assert code == 2 and "different model." in err and "--overwrite" in err and "Traceback" not in err
    data.write_text(data.read_text().replace('"question": "', '"question": "Really? ', 1))
    code, _, err = _run(capsys, argv + ["--limit", "2"])
    assert code == 2 and "different task.data_sha256" in err
    code, out, _ = _run(capsys, argv + ["--limit", "2", "--overwrite"])
    assert code == 0 and "Really? " in (tmp_path / "o/records/greedy.jsonl").read_text()
