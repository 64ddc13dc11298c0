"""contrastkit.generate: prompt kinds, records, and clear errors for bad input."""

import pytest

import contrastkit
from contrastkit.errors import UsageError
from contrastkit.generation import encode_prompt


def test_prompt_kinds(tiny_tok):
    ids, text = encode_prompt(tiny_tok, "the cat")
    assert ids == tiny_tok("the cat")["input_ids"] and text == "the cat"
    assert encode_prompt(tiny_tok, {"input_ids": [5, 6, 7]})[0] == [5, 6, 7]
    chat_ids, chat_text = encode_prompt(tiny_tok, {"messages": [{"role": "user", "content": "hi"}]})
    assert chat_text.endswith("assistant:") and chat_ids
    assert encode_prompt(tiny_tok, "hi", chat=True)[1] == chat_text


@pytest.mark.parametrize("bad, match", [
    ("   ", "is empty"),
    ({"input_ids": []}, "input_ids is empty"),
    ({"input_ids": [1, 99999]}, "outside the vocabulary"),
    ({"prompt": "a", "messages": []}, "exactly one of"),
    ({"messages": [{"role": "user", "content": ""}]}, "empty content"),
    (3.5, "expected text"),
])
def test_bad_prompts(tiny_tok, bad, match):
    with pytest.raises(UsageError, match=match):
        encode_prompt(tiny_tok, bad)


def test_result_records(tiny_llama, tiny_tok):
    r = contrastkit.generate(tiny_llama, tiny_tok, ["the cat", {"input_ids": [5, 6]}], "sample",
                             max_new_tokens=4, top_k=5, seed=0)
    assert len(r) == 2
    d = r[0].to_dict()
    assert d["strategy"] == "sample" and d["params"]["top_k"] == 5 and d["new_tokens"] == len(d["token_ids"])
    assert d["time_s"] > 0 and d["prompt"] == "the cat"


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "gredy"}, "Did you mean 'greedy'"),
    ({"strategy": "sample", "temprature": 0.5}, "no parameter 'temprature'. Did you mean 'temperature'"),
    ({"strategy": "sample", "temperature": 0}, r"temperature must be in \(0, inf\]"),
    ({"strategy": "sample", "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"strategy": "beam", "num_beams": 0}, r"num_beams must be in \[1, inf\]"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens must be in"),
])
def test_bad_parameters(tiny_llama, tiny_tok, kwargs, match):
    with pytest.raises(UsageError, match=match):
        contrastkit.generate(tiny_llama, tiny_tok, "the cat", **kwargs)


def test_prompt_longer_than_context(tiny_llama, tiny_tok):
    long_prompt = "the cat saw a dog " * 200
    with pytest.raises(UsageError, match="exceeds the model's context of 512"):
        contrastkit.generate(tiny_llama, tiny_tok, long_prompt, max_new_tokens=8)


def test_cli_repetition_penalty_stop_and_processor_records(tiny_model_dir, tmp_path, capsys):
    import json

    from contrastkit.cli.generate import main

    out = tmp_path / "out.jsonl"
    args = ["the cat", "--model", str(tiny_model_dir), "--max_new_tokens", "6", "--output", str(out)]
    assert main(args + ["--strategy", "greedy,dola", "--repetition_penalty", "1.3", "--stop", "zzz,qqq"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["strategy"] for r in recs] == ["greedy", "dola"]
    for r in recs:
        assert r["repetition_penalty"] == 1.3 and r["stop"] == ["zzz", "qqq"]
        assert any(p.startswith("RepetitionPenaltyLogitsProcessor(penalty=1.3") for p in r["processors"])
    assert main(args + ["--strategy", "greedy,dola"]) == 0  # defaults: dola 1.2, greedy none
    recs = {r["strategy"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert recs["dola"]["repetition_penalty"] == 1.2 and recs["greedy"]["processors"] == []
    capsys.readouterr()
    assert main(args + ["--repetition_penalty", "0"]) == 2
    assert "repetition_penalty must be > 0" in capsys.readouterr().err
