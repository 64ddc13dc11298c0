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
