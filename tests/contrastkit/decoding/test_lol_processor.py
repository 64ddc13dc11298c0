"""The LogitsProcessor form gives the strategy path's tokens inside plain HF generate and pipelines."""

import pytest
import torch

import contrastkit
from contrastkit.decoding.contrastive_decoding import bind_tokenizer
from contrastkit.decoding.lol_processor import ContrastLogitsProcessor
from contrastkit.generation import left_pad
from contrastkit.testing import tiny_llama

PROMPTS = ["the cat", "once upon a time there lived a king", "red"]
N = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_tok):
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(expert, tiny_tok)
    return expert, tiny_llama(1, init_range=0.3, num_layers=N)


def hf_with_processor(model, tok, n=6, **params):
    ids, mask = left_pad(tok, [tok(p)["input_ids"] for p in PROMPTS], "cpu")
    proc = ContrastLogitsProcessor(model, **params)
    try:
        out = model.generate(ids, attention_mask=mask, logits_processor=[proc], do_sample=False, max_new_tokens=n,
                             pad_token_id=tok.pad_token_id)
    finally:
        proc.remove()
    eos = tok.eos_token_id
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("strategy,params", [
    ("icd", {}),
    ("dola", dict(lower_layer="0,2")),
    ("lol", dict(lower_layer="1,3", refocus_ids=[9, 10, 11])),
    ("lol", dict(lower_layer="2", final_norm=True, lower_weight=1.0, refocus_weight=0.0)),
])
def test_processor_equals_strategy(models, tiny_tok, strategy, params):
    E, A = models
    if strategy != "dola":
        params = dict(params, amateur=A)
    ref = [r.token_ids for r in contrastkit.generate(E, tiny_tok, PROMPTS, strategy, max_new_tokens=6,
                                                     repetition_penalty=1.0, **params)]
    assert hf_with_processor(E, tiny_tok, strategy=strategy, **params) == ref


def hf_one(model, ids, proc, n=6, **kw):
    out = model.generate(torch.tensor([ids]), logits_processor=[proc], do_sample=False, max_new_tokens=n,
                         min_new_tokens=0, **kw)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("relation", ["one_longer", "same_length", "shorter", "much_longer", "continuation"])
def test_reused_processor_equals_fresh_for_every_length_relation(models, tiny_tok, relation):
    """A reused processor detects a new generate call from the sequence (its prefix), whatever the lengths.

    The old rule ('new call iff T != last T + 1') carried the first call's state into a second call whose
    prompt is exactly one token longer than the first call's last length.
    """
    E, A = models
    params = dict(amateur=A, lower_layer="1,3", refocus_ids=[9, 10])
    first = tiny_tok("the dog saw a bird")["input_ids"]  # 5 new tokens without EOS
    n = 5
    reused = ContrastLogitsProcessor(E, **params)
    out1 = hf_one(E, first, reused, n)
    last = len(first) + n - 1  # the longest input_ids the processor saw
    other = tiny_tok("the dog was red and the king saw a bird on the road by the river in the city")["input_ids"]
    second = {
        "one_longer": other[:last + 1], "same_length": other[:last], "shorter": other[:3],
        "much_longer": other[:last + 4], "continuation": first + out1,
    }[relation]
    assert len(second) == {"one_longer": last + 1, "same_length": last, "shorter": 3, "much_longer": last + 4,
                           "continuation": last + 1}[relation]
    fresh = ContrastLogitsProcessor(E, **params)
    try:
        assert hf_one(E, second, reused) == hf_one(E, second, fresh)
        reused.reset()  # reset() also gives a fresh start, even for a sequence that looks like a continuation
        assert hf_one(E, second, reused) == hf_one(E, second, fresh)
    finally:
        reused.remove()
        fresh.remove()


@pytest.mark.parametrize("hf_option", [dict(repetition_penalty=1.2), dict(min_new_tokens=3)])
def test_processor_refuses_hf_processors_that_run_before_it(models, tiny_tok, hf_option):
    """HF puts its own processors first; the processor then sees processed scores and says so."""
    from contrastkit.errors import UsageError

    E, A = models
    proc = ContrastLogitsProcessor(E, amateur=A, lower_layer="1,3", refocus_ids=[9, 10])
    ids = torch.tensor([tiny_tok(PROMPTS[1])["input_ids"]])
    try:
        with pytest.raises(UsageError, match="ran before it"):
            E.generate(ids, logits_processor=[proc], do_sample=False, max_new_tokens=4, **hf_option)
        # the strategy path applies the same option to the fused scores
        ref = contrastkit.generate(E, tiny_tok, PROMPTS[1], "lol", max_new_tokens=4, amateur=A, lower_layer="1,3",
                                   refocus_ids=[9, 10], **hf_option)
        assert ref[0].new_tokens >= hf_option.get("min_new_tokens", 1)
    finally:
        proc.remove()


def test_processor_reused_across_calls_and_in_pipeline(models, tiny_tok):
    from transformers import pipeline

    E, A = models
    ref = contrastkit.generate(E, tiny_tok, PROMPTS[1], "lol", max_new_tokens=6, amateur=A, lower_layer="1,3",
                               refocus_ids=[9, 10])[0].text
    before = len(E.model.layers[0]._forward_hooks)
    proc = ContrastLogitsProcessor(E, amateur=A, lower_layer="1,3", refocus_ids=[9, 10])
    assert len(E.model.layers[0]._forward_hooks) == before + 1
    pipe = pipeline("text-generation", model=E, tokenizer=tiny_tok)
    for _ in range(2):  # the second call must reset the processor's caches
        text = pipe(PROMPTS[1], logits_processor=[proc], max_new_tokens=6, do_sample=False,
                    return_full_text=False)[0]["generated_text"]
        assert text == ref
    proc.remove()
    assert len(E.model.layers[0]._forward_hooks) == before


@pytest.mark.integration
def test_smollm2_adapter_amateur_paths_agree(tmp_path):
    """On the real embedded model: mixed-adapter batch == sequential streams == LogitsProcessor in HF generate."""
    from peft import LoraConfig, get_peft_model

    from contrastkit.models import load_model

    torch.manual_seed(0)
    donor, tok = load_model("smollm2")  # own copies: the session fixture must not get adapters injected
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(donor, cfg).save_pretrained(str(tmp_path / "amateur"))
    del donor
    expert, tok = load_model("smollm2")
    adapter = str(tmp_path / "amateur")
    prompts = ["What is the capital of France?", "Who wrote Hamlet?"]
    kw = dict(max_new_tokens=6, chat=True, amateur=adapter)
    runs = {}
    for name, extra in {"icd mixed": {}, "icd seq": dict(mixed_batch=False)}.items():
        runs[name] = [r.token_ids for r in contrastkit.generate(expert, tok, prompts, "icd", **kw, **extra)]
    assert runs["icd mixed"] == runs["icd seq"]
    lol = [r.token_ids for r in contrastkit.generate(expert, tok, prompts, "lol", **kw)]
    assert lol == [r.token_ids for r in contrastkit.generate(expert, tok, prompts, "lol", mixed_batch=False, **kw)]
    enc = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
           for p in prompts]
    ids, mask = left_pad(tok, [tok(t, add_special_tokens=False)["input_ids"] for t in enc], "cpu")
    proc = ContrastLogitsProcessor(expert, amateur=adapter, strategy="lol", attention_mask=mask)
    out = expert.generate(ids, attention_mask=mask, logits_processor=[proc], do_sample=False, max_new_tokens=6,
                          pad_token_id=tok.pad_token_id)
    proc.remove()
    assert out[:, ids.shape[1]:].tolist() == [r + [tok.pad_token_id] * (6 - len(r)) for r in lol]
