"""Over-generate-and-rerank, n-best reranking, and ranker scores inside HF beam search."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class WordRanker:
    """score = 3 × occurrences of ``word`` in the continuation, minus 0.001 × its length."""

    def __init__(self, word):
        self.word, self.calls = word, []

    def score(self, prefixes, continuations):
        self.calls.append(list(continuations))
        return torch.tensor([3.0 * c.count(self.word) - 0.001 * len(c) for c in continuations])


def test_rerank_returns_argmax_and_equals_rankgen_overgenerate(tiny_llama, tiny_tok):
    from contrastkit.decoding.rankgen import rankgen
    from contrastkit.eval.rerank import rerank

    ranker = WordRanker("e")
    res = rerank(tiny_llama, tiny_tok, ["once upon a time"], ranker, n=6, max_new_tokens=6, seed=4)[0]
    texts = ranker.calls[0]
    scores = [3.0 * t.count("e") - 0.001 * len(t) for t in texts]
    best = max(range(6), key=lambda i: (scores[i], -i))
    assert res.text == texts[best] and res.score == pytest.approx(scores[best])
    assert [c[1] for c in res.candidates] == pytest.approx(sorted(scores, reverse=True))
    enc = tiny_tok(["once upon a time"], return_tensors="pt")
    out = tiny_llama.generate(**enc, custom_generate=rankgen, ranker=WordRanker("e"), beam_size=1, num_samples=6,
                              rerank_every=6, top_p=0.9, seed=4, lm_tokenizer=tiny_tok, max_new_tokens=6,
                              do_sample=False, pad_token_id=tiny_tok.pad_token_id)
    assert tiny_tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) == res.text


def test_rerank_candidates_reranks_hf_beam_nbest(tiny_llama, tiny_tok):
    from contrastkit.eval.rerank import rerank_candidates

    enc = tiny_tok(["the dog saw"], return_tensors="pt")
    out = tiny_llama.generate(**enc, num_beams=4, num_return_sequences=4, max_new_tokens=5, do_sample=False,
                              pad_token_id=tiny_tok.pad_token_id)
    nbest = tiny_tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    ranked = rerank_candidates(WordRanker("a"), ["the dog saw"], [nbest])[0]
    assert sorted(t for t, _ in ranked) == sorted(nbest)
    assert [s for _, s in ranked] == pytest.approx(sorted((3.0 * t.count("a") - 0.001 * len(t) for t in nbest), reverse=True))


def test_rescorer_adds_weighted_score_differences_by_ancestor(tiny_tok):
    """Hand-built calls: the second rerank point subtracts each row's *ancestor's* earlier score."""
    from contrastkit.decoding.rankgen import RankerBeamRescorer

    class CountX:
        def score(self, prefixes, conts):
            return torch.tensor([float(c.count("x")) for c in conts])

    x, y = tiny_tok.convert_tokens_to_ids("x"), tiny_tok.convert_tokens_to_ids("y")
    proc = RankerBeamRescorer(CountX(), tiny_tok, weight=2.0, rerank_every=2)
    P = [5, 6]  # prompt tokens
    zeros = torch.zeros(2, 7)
    assert torch.equal(proc(torch.tensor([P, P]), zeros), zeros)  # first call: prompt only, nothing added
    assert torch.equal(proc(torch.tensor([P + [x], P + [y]]), zeros), zeros)  # 1 token: not a rerank point
    out = proc(torch.tensor([P + [x, x], P + [y, x]]), zeros)  # rerank: scores 2 and 1, previous 0
    assert out[:, 0].tolist() == [4.0, 2.0]
    proc(torch.tensor([P + [y, x, y], P + [x, x, x]]), zeros)  # beams swapped rows (HF reorders)
    out = proc(torch.tensor([P + [y, x, y, y], P + [x, x, x, x]]), zeros)
    # row 0 descends from [y, x] (score 1): now 1 -> +0; row 1 from [x, x] (score 2): now 4 -> +2*(4-2)
    assert out[:, 3].tolist() == [0.0, 4.0]


def _marker_case(model, tok, kw):
    """A prompt whose HF beam n-best holds a clean word (one token) missing from the best beam."""
    for prompt in ["once upon a time there lived", "the king saw the river", "a small dog went to the city"]:
        enc = tok([prompt], return_tensors="pt")
        T = enc["input_ids"].shape[1]
        plain = model.generate(**enc, num_return_sequences=4, **kw)
        best_text = tok.decode(plain[0, T:], skip_special_tokens=True)
        for row in plain[1:, T:].tolist():
            for t in row:
                word = tok.decode([t]).strip()
                if len(word) > 1 and word.isalpha() and word not in best_text:
                    return enc, T, plain, word
    pytest.skip("no marker candidate in these beams")


def test_rescorer_weight_zero_is_hf_beam_search_and_a_marker_ranker_moves_the_best_beam(tiny_llama, tiny_tok):
    from contrastkit.decoding.rankgen import RankerBeamRescorer

    kw = dict(num_beams=4, max_new_tokens=6, do_sample=False, pad_token_id=tiny_tok.pad_token_id)
    enc, T, plain, marker = _marker_case(tiny_llama, tiny_tok, kw)
    zero = tiny_llama.generate(**enc, logits_processor=LogitsProcessorList(
        [RankerBeamRescorer(WordRanker(marker), tiny_tok, weight=0.0, rerank_every=1)]), **kw)
    assert torch.equal(zero[0], plain[0])
    moved = tiny_llama.generate(**enc, logits_processor=LogitsProcessorList(
        [RankerBeamRescorer(WordRanker(marker), tiny_tok, weight=5.0, rerank_every=1)]), **kw)
    assert marker in tiny_tok.decode(moved[0, T:], skip_special_tokens=True)
