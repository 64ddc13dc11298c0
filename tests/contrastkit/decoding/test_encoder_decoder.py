"""Encoder-decoder models (tiny random T5 and BART): greedy, sample, beam and contrastive search.

Contrastive search follows transformers 4.x's encoder-decoder algorithm: the encoder runs once,
the penalty uses the decoder's last-layer states (``decoder_hidden_states[-1]``, the decoder start
token included). The slow reference below is that algorithm written from scratch, cache-free.
It was checked against transformers 4.55.4 itself on this tiny T5 (same weights, saved from 4.55
and loaded here): 12 of 12 runs (2 seeds x (alpha, k) in {(0.6, 4), (0.4, 8)} x 3 prompts, 32 tokens)
gave identical tokens (notes/issue-11.md has the commands). The CD family refuses these models
with a UsageError that names what is supported.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastkit
from contrastkit.errors import UsageError

PROMPTS = ["the cat saw a dog", "once upon a time there lived a king and a queen", "red tree"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_t5(seed=0):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=512, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=2,
                   pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, initializer_factor=1.0)
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(cfg).eval()


def tiny_bart(seed=0):
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                     forced_eos_token_id=None, init_std=0.2)
    torch.manual_seed(seed)
    return BartForConditionalGeneration(cfg).eval()


MAKERS = {"t5": tiny_t5, "bart": tiny_bart}


@torch.no_grad()
def reference_cs(model, prompt: list[int], alpha: float, k: int, n_new: int, eos: int) -> list[int]:
    """transformers 4.x encoder-decoder contrastive search, cache-free, for one prompt (EOS banned: min_new_tokens)."""
    src = torch.tensor([prompt])
    dec = [model.config.decoder_start_token_id]
    for _ in range(n_new):
        logits = model(input_ids=src, decoder_input_ids=torch.tensor([dec])).logits[0, -1].float()
        logits[eos] = float("-inf")
        top_p, top_i = torch.softmax(logits, -1).topk(k)
        rows = torch.tensor([dec + [v] for v in top_i.tolist()])  # (k, t + 1)
        out = model(input_ids=src.expand(k, -1), decoder_input_ids=rows, output_hidden_states=True)
        hidden = out.decoder_hidden_states[-1]  # (k, t + 1, H)
        context = hidden[0, :-1]  # every earlier decoder position, the start token included
        best, best_score = None, float("-inf")
        for i, (p, v) in enumerate(zip(top_p.tolist(), top_i.tolist())):
            penalty = F.cosine_similarity(hidden[i, -1][None], context, dim=-1).max().item()
            score = (1 - alpha) * p - alpha * penalty
            if score > best_score:
                best, best_score = v, score
        dec.append(best)
    return dec[1:]


def ours(model, tok, prompts, strategy, n=16, **params):
    res = contrastkit.generate(model, tok, prompts, strategy, max_new_tokens=n, min_new_tokens=n,
                               batch_size=len(prompts), **params)
    return [r.token_ids for r in res]


def hf_builtin(model, tok, prompts, n=16, **kw):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="right")  # encoder inputs: right padded
    out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)
    return out[:, 1:].tolist()


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_greedy_and_beam_equal_hf_builtin(arch, tiny_tok):
    model = MAKERS[arch](0)
    assert ours(model, tiny_tok, PROMPTS, "greedy") == hf_builtin(model, tiny_tok, PROMPTS)
    assert ours(model, tiny_tok, PROMPTS, "beam", num_beams=3) == hf_builtin(model, tiny_tok, PROMPTS, num_beams=3)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_sample_is_seeded(arch, tiny_tok):
    model = MAKERS[arch](1)
    a = ours(model, tiny_tok, PROMPTS, "sample", seed=3)
    assert a == ours(model, tiny_tok, PROMPTS, "sample", seed=3)
    assert a != ours(model, tiny_tok, PROMPTS, "sample", seed=4)


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("seed,alpha,k", [(0, 0.6, 4), (1, 0.4, 8)])
def test_contrastive_search_equals_reference(arch, seed, alpha, k, tiny_tok):
    model = MAKERS[arch](seed)
    prompt = PROMPTS[seed]
    got = ours(model, tiny_tok, [prompt], "contrastive", n=32, penalty_alpha=alpha, top_k=k)[0]
    assert got == reference_cs(model, tiny_tok(prompt)["input_ids"], alpha, k, 32, tiny_tok.eos_token_id)
    if alpha >= 0.6:  # (at 0.4 the tiny BART's greedy token still wins every step)
        greedy = ours(model, tiny_tok, [prompt], "greedy", n=32)[0]
        assert got != greedy  # the penalty matters on this model


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_contrastive_search_padded_batch_equals_one_by_one(arch, tiny_tok):
    model = MAKERS[arch](2)
    batch = ours(model, tiny_tok, PROMPTS, "contrastive", n=20)
    assert batch == [ours(model, tiny_tok, [p], "contrastive", n=20)[0] for p in PROMPTS]
    assert ours(model, tiny_tok, PROMPTS, "contrastive", n=20, penalty_alpha=0.0) == \
        ours(model, tiny_tok, PROMPTS, "greedy", n=20)


@pytest.mark.parametrize("strategy", ["cd", "icd", "dola", "lol"])
def test_cd_family_refuses_encoder_decoder(strategy, tiny_tok):
    model = tiny_t5(0)
    params = {} if strategy == "dola" else {"amateur": tiny_t5(1)}
    with pytest.raises(UsageError, match="decoder-only models.*greedy, sample, beam or contrastive"):
        ours(model, tiny_tok, PROMPTS[:1], strategy, n=3, **params)
    with pytest.raises(UsageError, match="not possible for encoder-decoder"):
        ours(model, tiny_tok, PROMPTS[:1], "contrastive", n=3, candidate_pass="tree")
