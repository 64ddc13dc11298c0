"""``contrastkit train coact``: a full tiny run with reports, YAML keys, resume, and exit-2 errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from contrastkit.alignment.coact_testing import synthetic_text, tiny_bert
from contrastkit.cli.main import main as cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path: Path, texts, labels, text_key="text", label_key="intent"):
    with open(path, "w") as f:
        for t, y in zip(texts, labels):
            f.write(json.dumps({text_key: t, label_key: y}) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    tr = write_jsonl(tmp_path / "train.jsonl", *synthetic_text(7, 5, 0))
    te = write_jsonl(tmp_path / "test.jsonl", *synthetic_text(7, 2, 1))
    return tr, te


def flags(bert_dir, tr, te, out, *extra):
    return ["train", "coact", "--model", str(bert_dir), "--train_file", str(tr), "--test_file", str(te),
            "--output_dir", str(out), "--base_classes", "3", "--ways", "2", "--shots", "2", "--sessions", "2",
            "--batch_size", "4", "--max_length", "16", "--progress", "false", *extra]


def test_full_run_writes_reports_and_resumes(bert_dir, data, tmp_path, capsys):
    tr, te = data
    out = tmp_path / "out"
    assert cli(flags(bert_dir, tr, te, out, "--methods", "coact,prototype", "--seeds", "0,1")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"coact", "prototype"} and set(summary["runs"]["coact"]) == {"0", "1"}
    sessions = summary["runs"]["coact"]["0"]
    assert [s["seen_classes"] for s in sessions] == [3, 5, 7]
    agg = summary["aggregate"]["prototype"]
    assert agg["summary"]["avg_acc"]["n"] == 2 and len(agg["sessions"]) == 3
    mean_avg = sum(sum(s["acc"] for s in summary["runs"]["prototype"][k]) / 3 for k in ("0", "1")) / 2
    assert agg["summary"]["avg_acc"]["mean"] == pytest.approx(mean_avg)
    assert (out / "coact" / "seed1" / "session2.json").exists() and (out / "accuracy.png").stat().st_size > 0
    assert "| coact | 2 |" in (out / "summary.md").read_text()
    before = (out / "coact" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert cli(flags(bert_dir, tr, te, out, "--methods", "coact,prototype", "--seeds", "0,1")) == 0
    assert (out / "coact" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == before  # resumed: nothing re-run
    assert json.loads((out / "summary.json").read_text())["runs"]["coact"]["0"] == sessions


def test_yaml_keys_equal_flags_and_csv_input(bert_dir, tmp_path):
    texts, labels = synthetic_text(7, 5, 0)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utt", "label"])
        w.writerows(zip(texts, labels))
    write_jsonl(tmp_path / "test.jsonl", *synthetic_text(7, 2, 1), text_key="utt", label_key="label")
    (tmp_path / "run.yaml").write_text(
        f"model: {bert_dir}\ntrain_file: {tmp_path / 'train.csv'}\ntest_file: {tmp_path / 'test.jsonl'}\n"
        f"text_column: utt\nlabel_column: label\nbase_classes: 3\nways: 2\nshots: 2\nsessions: 2\n"
        f"methods: prototype\nseeds: [3]\noutput_dir: {tmp_path / 'y'}\nprogress: false\n")
    assert cli(["train", "coact", "--config", str(tmp_path / "run.yaml")]) == 0
    assert cli(flags(bert_dir, tmp_path / "train.csv", tmp_path / "test.jsonl", tmp_path / "f", "--methods",
                     "prototype", "--seeds", "3", "--text_column", "utt", "--label_column", "label")) == 0
    a = json.loads((tmp_path / "y" / "summary.json").read_text())["runs"]["prototype"]["3"]
    b = json.loads((tmp_path / "f" / "summary.json").read_text())["runs"]["prototype"]["3"]
    assert [r["acc"] for r in a] == [r["acc"] for r in b] and len(a) == 3


@pytest.mark.parametrize("case, match", [
    ("few_shots", "class 'class_06' has 1 training examples, fewer than the 2 shots"),
    ("too_many", "too many classes requested: .* = 9, but the training data has 7"),
    ("unseen_test", "test label 'zzz' never occurs in the training data"),
    ("method", "unknown CoACT method 'coac'. Did you mean 'coact'"),
    ("ema", r"ema_momentum must be in \[0, 1\]"),
])
def test_bad_input_exit_2_no_output(bert_dir, tmp_path, capsys, case, match):
    texts, labels = synthetic_text(7, 5, 0)
    te_t, te_y = synthetic_text(7, 2, 1)
    extra = []
    if case == "few_shots":
        texts, labels = texts[:-4], labels[:-4]
    if case == "too_many":
        extra = ["--sessions", "3"]
    if case == "unseen_test":
        te_y = te_y[:-1] + ["zzz"]
    if case == "method":
        extra = ["--methods", "coac"]
    if case == "ema":
        extra = ["--ema_momentum", "1.5"]
    tr = write_jsonl(tmp_path / "train.jsonl", texts, labels)
    te = write_jsonl(tmp_path / "test.jsonl", te_t, te_y)
    out = tmp_path / "out"
    assert cli(flags(bert_dir, tr, te, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    import re

    assert re.search(match, err), err
    assert not out.exists()


def test_encoder_that_cannot_be_lora_wrapped_exit_2(tmp_path, data, capsys):
    from contrastkit.testing import save_tiny, tiny_gpt2, tiny_tokenizer

    gpt2 = save_tiny(tmp_path / "gpt2", tiny_gpt2(), tiny_tokenizer())
    out = tmp_path / "out"
    assert cli(flags(gpt2, *data, out)) == 2
    err = capsys.readouterr().err
    assert "cannot be LoRA-wrapped" in err and "c_attn" in err and not out.exists()


def test_hub_default_offline_fails_fast_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert cli(["train", "coact", "--output_dir", str(out), "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "clinc_oos" in err and "--train_file" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # the shipped config's keys are all valid: it reaches the same data step
    assert cli(["train", "coact", "--config", "coact_minilm_clinc", "--output_dir", str(out)]) == 2
    assert "Hub id: clinc_oos" in capsys.readouterr().err and not out.exists()


def test_resume_refuses_an_encoder_folder_whose_weights_changed(bert_dir, data, tmp_path):
    """Same --model path, other weights: the checkpoint's identity is the folder's bytes, not its name."""
    import shutil


    tr, te = data
    enc = tmp_path / "enc"
    shutil.copytree(bert_dir, enc)
    out = tmp_path / "out"
    assert cli(flags(enc, tr, te, out, "--methods", "prototype", "--seeds", "0")) == 0
    assert cli(flags(enc, tr, te, out, "--methods", "prototype", "--seeds", "0")) == 0  # same bytes: resumes
    tiny_bert(1).save_pretrained(enc)
    assert cli(flags(enc, tr, te, out, "--methods", "prototype", "--seeds", "0")) == 2


def test_hub_default_maps_label_ids_to_names_and_drops_out_of_scope(monkeypatch):
    """clinc_oos stores intents as ClassLabel ids; 'oos' (out of scope) is not an intent and is dropped by
    default from the Hub data set, but kept when --exclude_labels is given explicitly."""
    import datasets

    from contrastkit.cli.train_coact import CoACTScriptConfig, load_data

    feats = datasets.Features({"text": datasets.Value("string"),
                               "intent": datasets.ClassLabel(names=["book_flight", "oos", "weather"])})
    split = {"text": ["a", "b", "c", "d"], "intent": [0, 1, 2, 1]}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_dict(split, features=feats) for k in ("train", "test")})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: dd)
    tr_x, tr_y, te_x, te_y = load_data(CoACTScriptConfig())
    assert tr_x == ["a", "c"] and tr_y == ["book_flight", "weather"] and te_y == tr_y
    _, kept, _, _ = load_data(CoACTScriptConfig(exclude_labels=["weather"]))
    assert kept == ["book_flight", "oos", "oos"]
