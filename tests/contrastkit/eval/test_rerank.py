"""Over-generate-and-rerank: the winner's token ids, sampler parameters, several prefixes, stable ties."""

from __future__ import annotations

import pytest
import torch

from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PairScorer:
    """score = 10 * len(prefix) + len(continuation)."""

    def score(self, prefixes, continuations):
        return torch.tensor([10.0 * len(p) + len(c) for p, c in zip(prefixes, continuations)])


class Constant:
    def score(self, prefixes, continuations):
        return torch.zeros(len(continuations))


class CountChar:
    def __init__(self, ch):
        self.ch = ch

    def score(self, prefixes, continuations):
        return torch.tensor([float(c.count(self.ch)) - 1e-3 * i for i, c in enumerate(continuations)])


def test_rerank_candidates_several_prefixes_and_ties():
    from contrastkit.eval.rerank import rerank_candidates

    out = rerank_candidates(PairScorer(), ["p", "qq"], [["aa", "b"], ["ccc", "d", "eeeee"]])
    assert out == [[("aa", 12.0), ("b", 11.0)], [("eeeee", 25.0), ("ccc", 23.0), ("d", 21.0)]]
    tied = rerank_candidates(Constant(), ["x", "y"], [["u", "v", "w"], ["z", "a"]])
    assert [[t for t, _ in r] for r in tied] == [["u", "v", "w"], ["z", "a"]]  # stable on ties
    with pytest.raises(UsageError):
        rerank_candidates(Constant(), ["x"], [["a"], ["b"]])
    with pytest.raises(UsageError):
        rerank_candidates(Constant(), ["x", "y"], [["a"], []])


def test_rerank_token_ids_are_the_winners(tiny_llama, tiny_tok):
    from contrastkit.eval.rerank import rerank

    found = False
    for ch in "etaos":
        res = rerank(tiny_llama, tiny_tok, "once upon a time", CountChar(ch), n=5, max_new_tokens=6, seed=1)[0]
        texts = [t for t, _ in res.candidates]
        assert tiny_tok.decode(res.token_ids, skip_special_tokens=True) == res.text == texts[0]
        assert res.prompt == "once upon a time"
        order = [t for t, _ in res.candidates]
        found = found or order[0] != order[-1]
    assert found


def test_rerank_forwards_temperature_and_top_p(tiny_llama, tiny_tok):
    from contrastkit.eval.rerank import rerank
    from contrastkit.generation import generate

    prompt = "the king saw"
    cold = rerank(tiny_llama, tiny_tok, [prompt], Constant(), n=4, max_new_tokens=6, temperature=0.3, top_p=0.8,
                  seed=7)[0]
    ref = generate(tiny_llama, tiny_tok, [prompt] * 4, "sample", max_new_tokens=6, temperature=0.3, top_p=0.8,
                   seed=7, batch_size=4)
    assert [t for t, _ in cold.candidates] == [s.text for s in ref]  # constant scores: the sampled order
    hot = generate(tiny_llama, tiny_tok, [prompt] * 4, "sample", max_new_tokens=6, temperature=1.0, top_p=0.8,
                   seed=7, batch_size=4)
    assert [s.text for s in hot] != [s.text for s in ref]  # temperature matters here
    assert cold.token_ids == ref[0].token_ids


def test_every_prompt_uses_the_same_seed_and_n_is_checked(tiny_llama, tiny_tok):
    from contrastkit.eval.rerank import rerank

    a, b = rerank(tiny_llama, tiny_tok, ["the king saw", "the king saw"], Constant(), n=3, max_new_tokens=5, seed=5)
    single = rerank(tiny_llama, tiny_tok, "the king saw", Constant(), n=3, max_new_tokens=5, seed=5)[0]
    assert a.candidates == b.candidates == single.candidates
    other = rerank(tiny_llama, tiny_tok, "the king saw", Constant(), n=3, max_new_tokens=5, seed=6)[0]
    assert other.candidates != single.candidates  # the seed matters here
    with pytest.raises(UsageError, match=r"n must be in \[1, inf\]"):  # names n, not the sampler's batch_size
        rerank(tiny_llama, tiny_tok, "the king saw", Constant(), n=0)
