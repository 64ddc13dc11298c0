"""The packed scorer is used only where it is exact, and equals a from-scratch reference there.

Reference: every answer as its own full sequence, no cache, no packing (written here, sharing no
code with the package). ALiBi families (Bloom, MPT) must fall back to the unpacked path and still
match; PEFT models must be unwrapped, and an adapter's scores must equal the merged model's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from contrastkit.decoding.scoring import encode_pair
from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context, packed_unsupported_reason
from contrastkit.testing import tiny_tokenizer


def tiny_family(family: str, attn: str = "sdpa", seed: int = 0):
    import transformers as tf

    tok = tiny_tokenizer()
    V = len(tok)
    common = dict(vocab_size=V, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
               "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[family]
        cfg = cls[0](hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, max_position_embeddings=512, tie_word_embeddings=False, **common)
        model_cls = cls[1]
    elif family == "gpt2":
        cfg, model_cls = tf.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=512, **common), tf.GPT2LMHeadModel
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                               max_position_embeddings=512, **common)
        model_cls = tf.GPTNeoXForCausalLM
    elif family == "bloom":
        cfg, model_cls = tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **common), tf.BloomForCausalLM
    elif family == "mpt":
        cfg = tf.MptConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=512, **common)
        model_cls = tf.MptForCausalLM
    else:
        raise ValueError(family)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # larger weights than the default init so positions and masks visibly matter
        for p in model.parameters():
            if p.dim() >= 1:
                p.add_(torch.randn_like(p) * 0.05)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


QUESTIONS = ("Is the sky blue?", "Why do cats purr?", "Who?")
ANSWERS = [[" Yes it is.", " No.", " Yes it is not."], [" Because they do.", " Because they can.", " x"],
           [" Nobody knows.", " Me."]]


def _reference(model, tok, contexts, answers):
    out = []
    for ctx, conts in zip(contexts, answers):
        row = []
        for cont in conts:
            c, x = encode_pair(tok, ctx, cont)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([c + x])).logits[0, len(c) - 1:-1]
            row.append(torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(x)[:, None]).sum().item())
        out.append(row)
    return out


def _contexts():
    return [build_context(q, "zero-shot") for q in QUESTIONS]


def _check(scorer, model, tok, contexts=None):
    contexts = contexts or [build_context(q) for q in QUESTIONS]
    got = scorer.score(contexts, ANSWERS)
    ref = _reference(model, tok, contexts, ANSWERS)
    for g, r in zip(got, ref):
        assert g == pytest.approx(r, abs=2e-4)
    return got


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2", "gpt_neox"])
def test_allowed_families_pack_and_match_reference(family, attn, tiny_tok):
    model = tiny_family(family, attn)
    scorer = PrefixCachedScorer(model, tiny_tok, pack_tokens=64, rows_per_forward=2)
    assert scorer.packed_supported(), packed_unsupported_reason(model)
    _check(scorer, model, tiny_tok)


@pytest.mark.parametrize("family", ["bloom", "mpt"])
def test_alibi_families_do_not_pack_and_match_reference(family, tiny_tok):
    model = tiny_family(family, "eager")
    reason = packed_unsupported_reason(model)
    assert reason is not None and family in reason
    scorer = PrefixCachedScorer(model, tiny_tok)
    assert not scorer.packed_supported()
    _check(scorer, model, tiny_tok, _contexts())


def test_forced_packing_is_wrong_on_alibi(tiny_tok):
    """Why the gate exists: packed layouts shift key indices, which ALiBi reads (MPT has no position ids)."""
    model = tiny_family("mpt", "eager")
    contexts = _contexts()
    ref = _reference(model, tiny_tok, contexts, ANSWERS)
    got = PrefixCachedScorer(model, tiny_tok, packed=True, pack_tokens=64).score(contexts, ANSWERS)
    assert max(abs(a - b) for g, r in zip(got, ref) for a, b in zip(g, r)) > 1e-3


def _lora(model, seed=1):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    return get_peft_model(copy.deepcopy(model), cfg).eval()


@pytest.mark.parametrize("packed", [None, False])
def test_adapter_scores_equal_merged_model(tiny_llama, tiny_tok, packed):
    peft_model = _lora(tiny_llama)
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    contexts = [build_context(q) for q in QUESTIONS]
    scorer = PrefixCachedScorer(peft_model, tiny_tok, packed=packed)
    if packed is None:
        assert scorer.packed_supported()  # the PEFT wrapper is unwrapped, the packed path still applies
    got = scorer.score(contexts, ANSWERS)
    want = _reference(merged, tiny_tok, contexts, ANSWERS)
    base = _reference(tiny_llama, tiny_tok, contexts, ANSWERS)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=2e-4)
    assert max(abs(a - b) for w, b_ in zip(want, base) for a, b in zip(w, b_)) > 1e-3  # the adapter matters


def test_lm_eval_plugin_with_adapter_equals_merged(tiny_llama, tiny_tok):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from contrastkit.eval.lm_eval_model import ContrastkitLM

    peft_model = _lora(tiny_llama)
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    ctx = build_context("Is the sky blue?")
    reqs = [Instance("loglikelihood", {}, (ctx, a), i) for i, a in enumerate(ANSWERS[0])]
    got = [ll for ll, _ in ContrastkitLM(pretrained=peft_model, tokenizer=tiny_tok, check_greedy=False).loglikelihood(
        reqs, disable_tqdm=True)]
    assert got == pytest.approx(_reference(merged, tiny_tok, [ctx], [ANSWERS[0]])[0], abs=2e-4)
