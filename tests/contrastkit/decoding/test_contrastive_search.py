"""Contrastive search (arXiv 2202.06417): scoring maths, exactness against a slow reference, invariants.

The slow reference below recomputes a full, cache-free forward for the context and for every
candidate, and picks with a strict ``>`` loop (first = most probable candidate wins ties).
The fast path (tree attention over a shared KV cache, LM head on winners only) must select the
very same tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, pipeline

import contrastkit
from contrastkit.decoding import contrastive_search, get_strategy, greedy
from contrastkit.decoding.contrastive_search import (
    ContrastiveSearchConfig,
    choose_pass,
    contrastive_scores,
    degeneration_penalty,
)
from contrastkit.errors import UsageError
from contrastkit.testing import tiny_gpt2, tiny_llama

PROMPTS = ["the cat saw a dog", "once upon a time there lived a king and a queen", "red tree"]


def tiny_gqa_llama(seed: int = 0, *, init_range: float = 0.3, attn_implementation: str = "sdpa"):
    """Like ``tiny_llama`` but with grouped-query attention (4 query heads, 2 KV heads), as SmolLM2 has."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tiny_llama(seed, init_range=init_range).config.to_dict()
    base.update(num_attention_heads=4, num_key_value_heads=2)
    cfg = LlamaConfig(**base)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


MAKERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "gqa": tiny_gqa_llama}


@torch.no_grad()
def slow_reference(model, prompt: list[int], alpha: float, k: int, n_new: int, banned: int | None,
                   skip_prompt: bool = False, rep: float = 1.0) -> list[int]:
    """Cache-free contrastive search for one unpadded prompt; ``banned`` plays min_new_tokens' EOS ban.

    ``rep`` plays HF's repetition penalty (CTRL rule on every token seen so far, prompt included):
    p is the softmax of the *processed* logits, as in transformers 4.55.

    Each step runs a full forward (no cache) of the context for p(. | context), then one of the k
    sequences ``context + [candidate]``: causal attention makes positions ``< T`` of row 0 the
    context's own states, and position T of row i is candidate i's state.
    """
    seq = list(prompt)
    for _ in range(n_new):
        logits = model(torch.tensor([seq])).logits[0, -1].float()  # p(. | context)
        if banned is not None:
            logits[banned] = float("-inf")
        for t in set(seq) if rep != 1.0 else ():
            logits[t] = logits[t] * rep if logits[t] < 0 else logits[t] / rep
        top_p, top_i = torch.softmax(logits, -1).topk(k)
        rows = torch.tensor([seq + [v] for v in top_i.tolist()])  # (k, T + 1)
        hidden = model(rows, output_hidden_states=True).hidden_states[-1]  # (k, T + 1, H)
        context = hidden[0, len(prompt) if skip_prompt else 0:-1]  # (T, H): every earlier position, prompt included
        if context.shape[0] == 0:  # (skip_prompt variant, first step: nothing to compare against)
            context = hidden.new_zeros(1, hidden.shape[-1])
        best, best_score = None, float("-inf")
        for i, (p, v) in enumerate(zip(top_p.tolist(), top_i.tolist())):
            penalty = F.cosine_similarity(hidden[i, -1][None], context, dim=-1).max().item()
            score = (1 - alpha) * p - alpha * penalty
            if score > best_score:  # strict: the most probable candidate wins ties
                best, best_score = v, score
        seq.append(best)
    return seq[len(prompt):]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(model, tok, prompts, n_new=24, **params):
    """Token ids of each prompt's continuation through the public API (left-padded batch)."""
    res = contrastkit.generate(model, tok, prompts, "contrastive", max_new_tokens=n_new, min_new_tokens=n_new,
                               batch_size=len(prompts), **params)
    return [r.token_ids for r in res]


# --- (a) maths on hand-built tensors -----------------------------------------------------------


def test_scores_hand_worked():
    """Context states e1, e2 and a pad slot (e1 again, masked). Candidates: e1 (cos 1), (e1+e2)/√2 (cos .707), -e1.

    penalties = [1, 0.7071, 0] (the pad slot, cos 1 with candidate 0 and 2... excluded; -e1 vs e2 = 0).
    alpha=0.5, p=[0.5, 0.3, 0.2]: scores = 0.5*p - 0.5*pen = [-0.25, -0.2036, 0.1] -> candidate 2 wins.
    """
    ctx = F.normalize(torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]]]), dim=-1)  # (1, 3, 3)
    valid = torch.tensor([[True, True, False]])
    cand = torch.tensor([[[2.0, 0, 0], [1.0, 1.0, 0], [-3.0, 0, 0]]])  # unnormalised on purpose
    pen = degeneration_penalty(cand, ctx, valid)
    torch.testing.assert_close(pen, torch.tensor([[1.0, 2 ** -0.5, 0.0]]))
    scores = contrastive_scores(torch.tensor([[0.5, 0.3, 0.2]]), pen, 0.5)
    torch.testing.assert_close(scores, torch.tensor([[-0.25, 0.15 - 0.5 * 2 ** -0.5, 0.1]]))
    assert scores.argmax(-1).item() == 2
    # ties: equal scores -> first (most probable) candidate
    assert contrastive_scores(torch.tensor([[0.4, 0.4]]), torch.zeros(1, 2), 0.6).argmax(-1).item() == 0


# --- (b) invariants on tiny random models ----------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("seed,alpha,k", [(0, 0.6, 4), (1, 0.6, 4), (2, 0.4, 8), (3, 1.0, 5)])
def test_matches_slow_cache_free_reference(arch, seed, alpha, k, tiny_tok):
    model = MAKERS[arch](seed, init_range=0.3)
    prompt = PROMPTS[seed % len(PROMPTS)]
    ids = tiny_tok(prompt)["input_ids"]
    fast = run(model, tiny_tok, [prompt], n_new=64, penalty_alpha=alpha, top_k=k)[0]
    assert fast == slow_reference(model, ids, alpha, k, 64, banned=tiny_tok.eos_token_id)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_repetition_penalty_matches_reference(arch, tiny_tok):
    """p comes from the processed logits: with repetition_penalty=1.2 the reference applies it before softmax."""
    model = MAKERS[arch](11, init_range=0.3)
    ids = tiny_tok(PROMPTS[1])["input_ids"]
    fast = run(model, tiny_tok, [PROMPTS[1]], n_new=48, repetition_penalty=1.2)[0]
    assert fast == slow_reference(model, ids, 0.6, 4, 48, banned=tiny_tok.eos_token_id, rep=1.2)
    assert fast != slow_reference(model, ids, 0.6, 4, 48, banned=tiny_tok.eos_token_id)  # the penalty matters


def test_gqa_matches_slow_reference(tiny_tok):
    """Grouped-query attention (the tree forward lets sdpa do GQA natively instead of repeat_kv)."""
    model = tiny_gqa_llama(5)
    ids = tiny_tok(PROMPTS[1])["input_ids"]
    fast = run(model, tiny_tok, [PROMPTS[1]], n_new=48, top_k=6)[0]
    assert fast == slow_reference(model, ids, 0.6, 6, 48, banned=tiny_tok.eos_token_id)


def test_post_processed_head_uses_replicate_and_stays_exact(tiny_tok):
    """A model that soft-caps its logits (as Gemma-2 does) cannot use head-on-winners: auto falls back."""
    from transformers import LlamaForCausalLM

    from contrastkit.decoding.tree import head_is_linear

    class SoftCapped(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)
            return out

    torch.manual_seed(6)
    model = SoftCapped(tiny_llama(6, init_range=0.3).config).eval()
    assert not head_is_linear(model, model.base_model)
    ids = tiny_tok(PROMPTS[0])["input_ids"]
    fast = run(model, tiny_tok, [PROMPTS[0]], n_new=32)[0]
    assert fast == slow_reference(model, ids, 0.6, 4, 32, banned=tiny_tok.eos_token_id)
    with pytest.raises(UsageError, match="post-processes its logits"):
        run(model, tiny_tok, [PROMPTS[0]], n_new=2, candidate_pass="tree")


def test_reference_discriminates(tiny_tok):
    """The exactness test can fail: leaving the prompt out of the penalty, or alpha=0, gives other tokens."""
    model = tiny_llama(0, init_range=0.3)
    ids = tiny_tok(PROMPTS[1])["input_ids"]
    fast = run(model, tiny_tok, [PROMPTS[1]], n_new=32)[0]
    eos = tiny_tok.eos_token_id
    assert fast == slow_reference(model, ids, 0.6, 4, 32, banned=eos)
    assert fast != slow_reference(model, ids, 0.6, 4, 32, banned=eos, skip_prompt=True)
    assert fast != slow_reference(model, ids, 0.0, 4, 32, banned=eos)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("params", [{"penalty_alpha": 0.0, "top_k": 4}, {"penalty_alpha": 0.8, "top_k": 1}])
def test_degenerate_settings_equal_greedy(arch, params, tiny_tok):
    model = MAKERS[arch](0, init_range=0.3)
    greedy_ids = [r.token_ids for r in contrastkit.generate(
        model, tiny_tok, PROMPTS, "greedy", max_new_tokens=40, min_new_tokens=40)]
    assert run(model, tiny_tok, PROMPTS, n_new=40, **params) == greedy_ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padded_batch_equals_one_by_one(arch, tiny_tok):
    model = MAKERS[arch](3, init_range=0.3)
    batch = run(model, tiny_tok, PROMPTS, n_new=32, top_k=5)
    assert batch == [run(model, tiny_tok, [p], n_new=32, top_k=5)[0] for p in PROMPTS]


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "eager"), ("gqa", "sdpa")])
def test_tree_equals_replicate_fallback(arch, attn, tiny_tok):
    model = MAKERS[arch](4, init_range=0.3, attn_implementation=attn)
    tree = run(model, tiny_tok, PROMPTS, n_new=32, top_k=6, candidate_pass="tree")
    assert tree == run(model, tiny_tok, PROMPTS, n_new=32, top_k=6, candidate_pass="replicate")


class Recorder(LogitsProcessor):
    """Bans one token and records the processed scores each step (no in-place edits)."""

    def __init__(self, banned: int):
        self.banned, self.seen = banned, []

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.banned] = float("-inf")
        self.seen.append(scores)
        return scores


def test_chosen_token_in_topk_of_processed_scores(tiny_tok):
    """User processors run before top-k: every chosen token is in the top-k of the *processed* scores."""
    model = tiny_llama(5, init_range=0.3)
    plain = run(model, tiny_tok, PROMPTS[:2], n_new=20)
    banned = plain[0][0]
    rec = Recorder(banned)
    out = run(model, tiny_tok, PROMPTS[:2], n_new=20, logits_processor=LogitsProcessorList([rec]))
    assert len(rec.seen) == 20
    for step, scores in enumerate(rec.seen):
        top = scores.topk(4, dim=-1).indices
        for row in range(2):
            assert out[row][step] in top[row].tolist()
            assert out[row][step] != banned


def test_rows_stop_independently_and_are_padded(tiny_tok):
    model = tiny_gpt2(6, init_range=0.3)
    enc = tiny_tok(PROMPTS, return_tensors="pt", padding=True)
    free = model.generate(**enc, custom_generate=contrastive_search, max_new_tokens=12, min_new_tokens=12)
    T = enc["input_ids"].shape[1]
    stop = int(free[0, T + 3])  # row 0 generates this token at step 3: make it the EOS
    out = model.generate(**enc, custom_generate=contrastive_search, max_new_tokens=12, eos_token_id=stop)
    first = (free[0, T:] == stop).nonzero()[0, 0].item()
    assert torch.equal(out[0, T:T + first + 1], free[0, T:T + first + 1])
    assert (out[0, T + first + 1:] == tiny_tok.pad_token_id).all()
    assert out.shape[1] <= free.shape[1]


class Collect:
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_streams_prompt_then_each_token(tiny_tok):
    model = tiny_llama(7, init_range=0.3)
    streamer = Collect()
    res = contrastkit.generate(model, tiny_tok, PROMPTS[0], "contrastive", max_new_tokens=10, min_new_tokens=10,
                               streamer=streamer)[0]
    assert streamer.ended and streamer.chunks[0] == tiny_tok(PROMPTS[0])["input_ids"]
    assert [c[0] for c in streamer.chunks[1:]] == res.token_ids


def test_model_generate_and_pipeline_paths(tiny_tok):
    model = tiny_llama(8, init_range=0.3)
    api = contrastkit.generate(model, tiny_tok, PROMPTS[1], "contrastive", max_new_tokens=16, min_new_tokens=16,
                               penalty_alpha=0.5, top_k=3)[0].text
    pipe = pipeline("text-generation", model=model, tokenizer=tiny_tok)
    out = pipe(PROMPTS[1], max_new_tokens=16, min_new_tokens=16, do_sample=False, return_full_text=False,
               custom_generate=contrastive_search, penalty_alpha=0.5, top_k=3)
    assert out[0]["generated_text"] == api


def test_cache_holds_prefix_once(tiny_tok):
    """The returned cache has B rows and T + new - 1 positions (not k copies, no leftover candidates)."""
    model = tiny_llama(9, init_range=0.3)
    enc = tiny_tok(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**enc, custom_generate=contrastive_search, top_k=8, max_new_tokens=6, min_new_tokens=6,
                         return_dict_in_generate=True)
    layer = out.cache.layers[0]
    assert layer.keys.shape[0] == len(PROMPTS)
    assert layer.keys.shape[2] == out.sequences.shape[1] - 1


def test_auto_pass_choice(tiny_tok):
    model = tiny_llama(0)
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    assert choose_pass("auto", model, cache, head_linear=True) == "tree"
    assert choose_pass("auto", model, cache, head_linear=False) == "replicate"
    model.config._attn_implementation = "flash_attention_2"  # cannot take 4-D masks
    assert choose_pass("auto", model, cache, head_linear=True) == "replicate"
    with pytest.raises(UsageError, match="flash_attention_2"):
        choose_pass("tree", model, cache, head_linear=True)


@pytest.mark.parametrize("params,match", [
    ({"penalty_alpha": 1.5}, r"penalty_alpha must be in \[0, 1\], got 1.5"),
    ({"penalty_alpha": -0.1}, "penalty_alpha"),
    ({"top_k": 0}, r"top_k must be in \[1, inf\], got 0"),
    ({"candidate_pass": "tre"}, "Did you mean 'tree'"),
    ({"top_kk": 3}, "Did you mean 'top_k'"),
])
def test_bad_parameters_raise_usage_error(params, match, tiny_tok):
    with pytest.raises(UsageError, match=match):
        get_strategy("contrastive").make_config(**params)


def test_bad_parameters_from_model_generate(tiny_tok):
    model = tiny_llama(0)
    enc = tiny_tok(PROMPTS[:1], return_tensors="pt")
    with pytest.raises(UsageError, match="top_k"):
        model.generate(**enc, custom_generate=contrastive_search, top_k=10_000, max_new_tokens=2)
    with pytest.raises(UsageError, match="penalty_alpha"):
        model.generate(**enc, custom_generate=contrastive_search, penalty_alpha=2.0, max_new_tokens=2)


def test_config_defaults_and_registry():
    cfg = ContrastiveSearchConfig()
    assert (cfg.penalty_alpha, cfg.top_k, cfg.candidate_pass) == (0.6, 4, "auto")
    strat = get_strategy("contrastive")
    assert strat.custom_generate is contrastive_search and strat.streams
    assert greedy is get_strategy("greedy").custom_generate


# --- integration: the embedded SmolLM2 -------------------------------------------------------


@pytest.mark.integration
def test_smollm2_tree_equals_fallback_and_reference(smollm2):
    model, tok = smollm2
    prompts = [{"messages": [{"role": "user", "content": "Write one sentence about the sea."}]},
               "The history of the city of Paris began"]
    tree = run(model, tok, prompts, n_new=32)
    assert tree == run(model, tok, prompts, n_new=32, candidate_pass="replicate")
    ids = tok("The history of the city of Paris began")["input_ids"]
    assert tree[1][:12] == slow_reference(model, ids, 0.6, 4, 12, banned=tok.eos_token_id)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    out = pipe(prompts[1], max_new_tokens=32, min_new_tokens=32, do_sample=False, return_full_text=False,
               custom_generate=contrastive_search, penalty_alpha=0.6, top_k=4)
    assert out[0]["generated_text"] == tok.decode(tree[1], skip_special_tokens=True)
