"""Preference data loading: formats, HH-RLHF splitting, chat messages, validation messages."""

from __future__ import annotations

import gzip
import json

import pytest

from contrastkit.alignment.data import check_prompt_lengths, load_preference_data, normalize_row
from contrastkit.errors import UsageError


def test_hh_transcript_split_at_last_shared_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Sure, here is one."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."
    row = normalize_row({"chosen": chosen, "rejected": rejected}, "x:1")
    assert row["prompt"].endswith("joke?\n\nAssistant:")
    assert row == {"prompt": chosen[: len(row["prompt"])], "chosen": " Sure, here is one.", "rejected": " No."}


def test_chat_messages_split_at_common_prefix():
    sys_user = [{"role": "user", "content": "hi"}]
    row = normalize_row({"chosen": sys_user + [{"role": "assistant", "content": "hello"}],
                         "rejected": sys_user + [{"role": "assistant", "content": "go away"}]}, "x:1")
    assert row["prompt"] == sys_user and row["chosen"][0]["content"] == "hello"
    with pytest.raises(UsageError, match="x:2: empty 'chosen' response"):
        normalize_row({"prompt": sys_user, "chosen": [{"role": "assistant", "content": " "}],
                       "rejected": [{"role": "assistant", "content": "no"}]}, "x:2")


def test_jsonl_gz_limit_offset_and_errors(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(5):
            f.write(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n")
        f.write(json.dumps({"prompt": "q5", "chosen": "", "rejected": "b"}) + "\n")
    ds = load_preference_data(path, limit=2, offset=1)
    assert ds["prompt"][:] == ["q1", "q2"]
    with pytest.raises(UsageError, match=r"p.jsonl.gz:6: empty 'chosen' response"):
        load_preference_data(path)
    assert len(load_preference_data(path, drop_invalid=True)) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1: missing column 'chosen'"):
        load_preference_data(bad)
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{oops\n')
    with pytest.raises(UsageError, match="bad.jsonl:2: malformed JSON"):
        load_preference_data(bad)
    with pytest.raises(UsageError, match="does not exist"):
        load_preference_data(tmp_path / "nope.jsonl")


def test_datasets_folder_with_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])})
    dd.save_to_disk(str(tmp_path / "ds"))
    assert len(load_preference_data(tmp_path / "ds")) == 1
    with pytest.raises(UsageError, match="no split 'trian'. Did you mean 'train'"):
        load_preference_data(tmp_path / "ds", split="trian")


def test_prompt_length_check_error_or_drop(tiny_tok):
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "the cat", "chosen": "a", "rejected": "b"},
                                     {"prompt": " ".join(["king"] * 20), "chosen": "a", "rejected": "b"}])
    with pytest.raises(UsageError, match="row 2 has a prompt of 20 tokens, not shorter than max_length=10"):
        check_prompt_lengths(ds, tiny_tok, 10)
    assert len(check_prompt_lengths(ds, tiny_tok, 10, drop=True)) == 1
    assert check_prompt_lengths(ds, tiny_tok, None) is ds


def bos_tokenizer():
    """The tiny test tokenizer, but adding a BOS to every encoded text (as Llama-style tokenizers do)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    from contrastkit.testing import tiny_tokenizer

    tok = copy.deepcopy(tiny_tokenizer())
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    assert tok("the cat")["input_ids"][0] == 1
    return tok


def test_prompt_length_check_counts_as_trl_counts_with_a_bos_tokenizer(tmp_path):
    """trl counts the BOS: a prompt of n words-tokens is n + 1 long, and trl drops it at max_length = n + 1.
    Our check must flag exactly the rows trl drops (here the 3-token prompt at max_length 4, and not the
    2-token one)."""
    import datasets
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from contrastkit.testing import tiny_llama

    tok = bos_tokenizer()
    rows = [{"prompt": "the cat saw", "chosen": " a dog", "rejected": " no"},
            {"prompt": "the cat", "chosen": " a dog", "rejected": " no"}]
    assert [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows] == [3, 2]
    ds = datasets.Dataset.from_list(rows)
    with pytest.raises(UsageError, match="row 1 has a prompt of 4 tokens, not shorter than max_length=4"):
        check_prompt_lengths(ds, tok, 4)
    dropped = []
    kept = check_prompt_lengths(ds, tok, 4, drop=True, dropped=dropped)
    assert kept["prompt"] == ["the cat"] and dropped == [(1, "prompt of 4 tokens >= max_length=4")]
    trl_kept = DPOTrainer(model=tiny_llama(), args=DPOConfig(output_dir=str(tmp_path), max_length=4, use_cpu=True,
                                                              report_to="none", bf16=False),
                          train_dataset=ds, processing_class=tok,
                          peft_config=LoraConfig(r=2, target_modules=["q_proj"])).train_dataset
    assert trl_kept["prompt"] == kept["prompt"]
    # keep_end: trl keeps the end of every row and drops nothing, so neither do we
    assert len(check_prompt_lengths(ds, tok, 4, truncation_mode="keep_end")) == 2


def test_dropped_invalid_rows_are_reported_with_reason(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": " ", "rejected": "c"},
        {"prompt": "a", "rejected": "c"}]) + "\n")
    dropped = []
    ds = load_preference_data(path, drop_invalid=True, dropped=dropped)
    assert len(ds) == 1
    assert dropped == [(2, "empty 'chosen' response"), (3, dropped[1][1])] and "missing column 'chosen'" in dropped[1][1]
