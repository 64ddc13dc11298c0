"""lm-eval plugin details: the rolling-window prefix token, batch_size parsing, prompt truncation."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from contrastkit.eval.lm_eval_model import ContrastkitLM, _batch_size  # noqa: E402
from contrastkit.generation import generate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prefix_token_is_bos_when_the_tokenizer_has_one(tiny_llama, tiny_tok):
    assert tiny_tok.bos_token_id is not None and tiny_tok.bos_token_id != tiny_tok.eos_token_id
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok)
    assert lm.prefix_token_id == tiny_tok.bos_token_id


def test_batch_size_parsing():
    assert _batch_size(4) == 4 and _batch_size("16") == 16
    assert _batch_size("0") == 8 and _batch_size("auto") == 8 and _batch_size("auto:4") == 8


def test_generate_until_keeps_the_end_of_a_long_prompt(tiny_llama, tiny_tok):
    prompt = "once upon a time there lived a king and a queen in a large old house by the river"
    ids = tiny_tok(prompt, add_special_tokens=False)["input_ids"]
    max_new, keep = 4, 6
    assert len(ids) > 2 * keep
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok)
    lm.max_length = max_new + keep  # room for only the last `keep` prompt tokens
    req = [Instance(request_type="generate_until", doc={}, arguments=(prompt, {"max_gen_toks": max_new}), idx=0)]
    [got] = lm.generate_until(req, disable_tqdm=True)
    tail = generate(tiny_llama, tiny_tok, [ids[-keep:]], "greedy", max_new_tokens=max_new)[0].text
    head = generate(tiny_llama, tiny_tok, [ids[:keep]], "greedy", max_new_tokens=max_new)[0].text
    assert tail != head  # the check below can tell the two apart
    assert got == tail


def test_is_greedy_decodes_by_the_rules_argmax(tiny_llama, tiny_tok):
    # a plain rule's argmax is greedy decoding, whatever the sampling strategy's own parameters
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, strategy="sample", temperature=0.7, check_greedy=False)
    assert lm._greedy_strategy() == ("greedy", {})
    # a contrastive rule decodes with its own strategy, sampling switched off
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, strategy="dola", sampling=True, check_greedy=False)
    name, params = lm._greedy_strategy()
    assert name == "dola" and params["sampling"] is False
    assert lm.params["sampling"] is True  # the scoring rule's own parameters are left alone


def test_generate_until_takes_a_single_string_as_one_stop_sequence(tiny_llama, tiny_tok):
    prompt = "Once upon"
    ids = tiny_tok(prompt, add_special_tokens=False)["input_ids"]
    full = generate(tiny_llama, tiny_tok, [ids], "greedy", max_new_tokens=16)[0].text
    # a two-character stop string whose first character already occurs earlier in the text: a stop string
    # read character by character would cut the text sooner
    i = next(i for i in range(len(full) - 2, 0, -1) if full.find(full[i:i + 2]) == i and full[i] in full[:i])
    stop = full[i:i + 2]
    assert full.split(stop)[0] != full.split(stop[0])[0]
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok)
    req = [Instance(request_type="generate_until", doc={}, arguments=(prompt, {"until": stop, "max_gen_toks": 16}),
                    idx=0)]
    assert lm.generate_until(req, disable_tqdm=True) == [full.split(stop)[0]]
