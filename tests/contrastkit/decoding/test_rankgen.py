"""RankGen beam search (contrastkit.decoding.rankgen) against slow from-scratch references.

The reference loop below re-runs the model on the full token ids of every row at every step
(no KV cache, no padding, one prompt at a time) and reranks with Python's stable sort; it shares
no code with the package beyond the model, the tokenizer and the ranker being tested.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_rankgen(tmp_path_factory, tiny_tok):
    from tests.contrastkit.rankers.tiny_rankgen import make_tiny_rankgen

    path = tmp_path_factory.mktemp("rankgen") / "rankgen-t5-tiny"
    return path, make_tiny_rankgen(path, tiny_tok)

PROMPTS = ["once upon a time there lived a king", "the dog"]


class LengthThenTextRanker:
    """Deterministic text ranker: prefers continuations with more 'e' letters, then shorter ones."""

    def __init__(self):
        self.calls = []

    def score(self, prefixes, continuations):
        self.calls.append((list(prefixes), list(continuations)))
        return torch.tensor([c.count("e") - 0.01 * len(c) for c in continuations], dtype=torch.float32)

    def score_grouped(self, prefixes, candidates):
        k = len(candidates) // len(prefixes)
        return self.score([p for p in prefixes for _ in range(k)], candidates).view(len(prefixes), k)


class ConstantRanker(LengthThenTextRanker):
    def score(self, prefixes, continuations):
        self.calls.append((list(prefixes), list(continuations)))
        return torch.zeros(len(continuations))


class NoRanker:
    def score(self, *a):
        raise AssertionError("the ranker must not be called when B*N == 1")

    score_grouped = score


class EosBoost(LogitsProcessor):
    """Raises the EOS logit so that some beams finish early; counts its calls."""

    def __init__(self, eos, boost=2.0):
        self.eos, self.boost, self.calls = eos, boost, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        scores = scores.clone()
        scores[:, self.eos] += self.boost
        return scores


def run(model, tok, prompts, max_new_tokens, processors=None, **params):
    from contrastkit.decoding.rankgen import rankgen

    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, custom_generate=rankgen, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id, lm_tokenizer=tok,
                         logits_processor=LogitsProcessorList(processors or []), **params)
    T = enc["input_ids"].shape[1]
    return [row[T:].tolist() for row in out]


def slow_rankgen(model, tok, prompt, ranker, B, N, L, max_new, top_p, seed, processor=None):
    """Reference: full re-forward of every row every step; returns the best row's new tokens."""
    eos, pad = tok.eos_token_id, tok.pad_token_id
    g = torch.Generator().manual_seed(seed)
    prompt_ids = tok(prompt)["input_ids"]
    K = B * N
    rows = [list(prompt_ids) for _ in range(K)]
    fin = [False] * K
    new = 0
    while True:
        fin_before = list(fin)
        for _ in range(L):
            with torch.no_grad():
                logits = torch.stack([model(torch.tensor([r])).logits[0, -1].float() for r in rows])
            if processor is not None:
                logits = processor(torch.tensor(rows), logits)
            probs = torch.softmax(TopPLogitsWarper(top_p)(None, logits), dim=-1)
            drawn = torch.multinomial(probs, 1, generator=g)[:, 0].tolist()
            for i in range(K):
                t = pad if fin[i] else drawn[i]
                rows[i].append(t)
                fin[i] = fin[i] or t == eos
            new += 1
            if new == max_new or all(fin):
                break
        texts = [tok.decode(r[len(prompt_ids):], skip_special_tokens=True) for r in rows]
        s = ranker.score([prompt] * K, texts).tolist() if K > 1 else [0.0]
        s = [float("-inf") if fin_before[i] and i % N else s[i] for i in range(K)]
        order = sorted(range(K), key=lambda i: -s[i])[:B]  # stable: ties keep the earlier candidate
        if new == max_new or all(fin):
            return rows[order[0]][len(prompt_ids):]
        rows = [list(rows[o]) for o in order for _ in range(N)]
        fin = [fin[o] for o in order for _ in range(N)]


def test_kv_carrying_loop_equals_slow_reprefill_reference(tiny_llama, tiny_tok):
    ranker = LengthThenTextRanker()
    proc = EosBoost(tiny_tok.eos_token_id, boost=1.5)
    got = run(tiny_llama, tiny_tok, PROMPTS[:1], 10, [proc], ranker=ranker, beam_size=2, num_samples=3,
              rerank_every=3, top_p=0.9, seed=7)[0]
    want = slow_rankgen(tiny_llama, tiny_tok, PROMPTS[0], LengthThenTextRanker(), 2, 3, 3, 10, 0.9, 7,
                        EosBoost(tiny_tok.eos_token_id, boost=1.5))
    assert got == want
    assert len(ranker.calls) == 4  # ceil(10 / 3) rounds, one ranker call each
    assert all(len(c[1]) == 6 for c in ranker.calls)  # all B*N candidates in one call


def test_finished_beams_are_carried_once(tiny_llama, tiny_tok):
    """Strong EOS boost: beams finish early and must not fill both beam slots with copies of themselves."""
    for seed in range(3):
        proc = EosBoost(tiny_tok.eos_token_id, boost=4.0)
        got = run(tiny_llama, tiny_tok, PROMPTS[:1], 8, [proc], ranker=LengthThenTextRanker(), beam_size=2,
                  num_samples=2, rerank_every=2, top_p=0.9, seed=seed)[0]
        want = slow_rankgen(tiny_llama, tiny_tok, PROMPTS[0], LengthThenTextRanker(), 2, 2, 2, 8, 0.9, seed,
                            EosBoost(tiny_tok.eos_token_id, boost=4.0))
        assert got == want


def test_each_logits_processor_called_once_per_step(tiny_llama, tiny_tok):
    proc = EosBoost(tiny_tok.eos_token_id, boost=0.0)
    out = run(tiny_llama, tiny_tok, PROMPTS, 7, [proc], ranker=LengthThenTextRanker(), beam_size=2, num_samples=2,
              rerank_every=3, seed=0)
    assert proc.calls == len(out[0]) == 7


@pytest.mark.parametrize("top_p,temperature", [(0.9, 1.0), (0.5, 1.5)])
def test_single_sample_is_nucleus_sampling_without_ranker(tiny_llama, tiny_tok, top_p, temperature):
    from contrastkit.decoding.plain import sample

    got = run(tiny_llama, tiny_tok, PROMPTS[:1], 12, ranker=NoRanker(), beam_size=1, num_samples=1,
              rerank_every=12, top_p=top_p, temperature=temperature, seed=3)[0]
    enc = tiny_tok(PROMPTS[:1], return_tensors="pt")
    ref = tiny_llama.generate(**enc, custom_generate=sample, top_p=top_p, temperature=temperature, seed=3,
                              max_new_tokens=12, do_sample=False, pad_token_id=tiny_tok.pad_token_id)
    assert got == ref[0, enc["input_ids"].shape[1]:].tolist()
    full = tiny_llama.generate(**enc, custom_generate=sample, top_p=1.0, temperature=temperature, seed=3,
                               max_new_tokens=12, do_sample=False, pad_token_id=tiny_tok.pad_token_id)
    if top_p < 0.9:  # the nucleus matters here: without it the tokens differ
        assert got != full[0, enc["input_ids"].shape[1]:].tolist()


def test_single_sample_loads_no_ranker(tiny_llama, tiny_tok):
    """B=N=1 never touches the ranker: the default (a Hub checkpoint) is not even loaded, so it runs offline."""
    got = run(tiny_llama, tiny_tok, PROMPTS[:1], 4, beam_size=1, num_samples=1, rerank_every=4, seed=3)[0]
    assert len(got) == 4


def test_overgenerate_and_rerank_returns_argmax_sample(tiny_llama, tiny_tok):
    from contrastkit.decoding.plain import sample

    ranker = LengthThenTextRanker()
    got = run(tiny_llama, tiny_tok, PROMPTS[:1], 6, ranker=ranker, beam_size=1, num_samples=5, rerank_every=6,
              top_p=0.9, seed=11)[0]
    assert len(ranker.calls) == 1
    texts = ranker.calls[0][1]
    # the 5 candidates are exactly 5 nucleus samples of the prompt drawn from one generator
    enc = tiny_tok(PROMPTS[:1] * 5, return_tensors="pt")
    ref = tiny_llama.generate(**enc, custom_generate=sample, top_p=0.9, seed=11, max_new_tokens=6, do_sample=False,
                              pad_token_id=tiny_tok.pad_token_id)
    T = enc["input_ids"].shape[1]
    assert texts == tiny_tok.batch_decode(ref[:, T:], skip_special_tokens=True)
    scores = [c.count("e") - 0.01 * len(c) for c in texts]
    best = max(range(5), key=lambda i: (scores[i], -i))
    assert tiny_tok.decode(got, skip_special_tokens=True) == texts[best]
    assert got == ref[best, T:].tolist()


def test_constant_ranker_keeps_first_candidates(tiny_llama, tiny_tok):
    ranker = ConstantRanker()
    got = run(tiny_llama, tiny_tok, PROMPTS[:1], 6, ranker=ranker, beam_size=2, num_samples=3, rerank_every=2,
              top_p=0.9, seed=5)[0]
    want = slow_rankgen(tiny_llama, tiny_tok, PROMPTS[0], ConstantRanker(), 2, 3, 2, 6, 0.9, 5)
    assert got == want
    first_round = ranker.calls[0][1]
    # round 2's first three candidates extend candidate 0 of round 1, the next three candidate 1
    second = ranker.calls[1][1]
    assert all(c.startswith(first_round[0]) for c in second[:3]) and all(c.startswith(first_round[1]) for c in second[3:])
    assert tiny_tok.decode(got, skip_special_tokens=True).startswith(ranker.calls[-2][1][0])


def test_batch_equals_one_by_one_runs(tiny_llama, tiny_tok, tiny_rankgen):
    from contrastkit.rankers import get_ranker

    ranker = get_ranker(str(tiny_rankgen[0]), device="cpu")
    kw = dict(ranker=ranker, beam_size=2, num_samples=3, rerank_every=3, top_p=0.9, seed=1)
    batch = run(tiny_llama, tiny_tok, PROMPTS, 7, **kw)
    for i, p in enumerate(PROMPTS):
        assert batch[i] == run(tiny_llama, tiny_tok, [p], 7, **kw)[0]


def test_seeded_and_reproducible(tiny_llama, tiny_tok):
    kw = dict(ranker=LengthThenTextRanker(), beam_size=2, num_samples=2, rerank_every=2, top_p=0.9)
    a = run(tiny_llama, tiny_tok, PROMPTS, 6, seed=0, **kw)
    assert a == run(tiny_llama, tiny_tok, PROMPTS, 6, seed=0, **kw)
    assert any(a != run(tiny_llama, tiny_tok, PROMPTS, 6, seed=s, **kw) for s in (1, 2, 3))


def test_api_and_registry(tiny_llama, tiny_tok):
    import contrastkit
    from contrastkit.decoding import get_strategy

    strat = get_strategy("rankgen")
    assert {p[0] for p in strat.parameters()} >= {"ranker", "beam_size", "num_samples", "rerank_every", "top_p"}
    res = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "rankgen", max_new_tokens=5, ranker=ConstantRanker(),
                               beam_size=2, num_samples=2, rerank_every=2, lm_tokenizer=tiny_tok, seed=0)
    assert len(res) == 2 and all(r.new_tokens <= 5 for r in res)
    with pytest.raises(UsageError, match="beam_size"):
        strat.make_config(beam_size=0)


@pytest.mark.integration
def test_rankgen_on_embedded_smollm2(smollm2):
    import contrastkit
    from contrastkit.rankers import LMRanker

    model, tok = smollm2
    ranker = LMRanker(model, tok)
    res = contrastkit.generate(model, tok, ["The history of the city begins"], "rankgen", max_new_tokens=8,
                               ranker=ranker, beam_size=2, num_samples=2, rerank_every=4, seed=0)
    assert res[0].new_tokens == 8 and res[0].text.strip()


class ShortestRanker(LengthThenTextRanker):
    def score(self, prefixes, continuations):
        self.calls.append((list(prefixes), list(continuations)))
        return torch.tensor([-float(len(c)) for c in continuations])


class EosFirstRowFirstStep(LogitsProcessor):
    """Row 0 ends at once (EOS at the first step); every other row samples freely."""

    def __init__(self, eos):
        self.eos, self.calls = eos, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == 1:
            scores = scores.clone()
            scores[0] = float("-inf")
            scores[0, self.eos] = 0.0
        return scores


def test_a_finished_beam_takes_one_slot_not_all(tiny_llama, tiny_tok):
    """The empty finished beam is the best candidate every round; the second slot must stay a live beam."""
    ranker = ShortestRanker()
    run(tiny_llama, tiny_tok, PROMPTS[:1], 6, [EosFirstRowFirstStep(tiny_tok.eos_token_id)], ranker=ranker,
        beam_size=2, num_samples=2, rerank_every=2, top_p=0.9, seed=0)
    assert len(ranker.calls) == 3
    first = ranker.calls[0][1]
    assert first[0] == "" and all(c for c in first[1:])  # row 0 finished at once
    for _, cands in ranker.calls[1:]:
        assert cands[:2] == ["", ""]  # the finished beam's two copies
        assert all(c for c in cands[2:])  # the other slot is a live beam, not another copy


def test_pipeline_runs_rankgen(tiny_llama, tiny_tok):
    from transformers import pipeline

    from contrastkit.decoding.rankgen import rankgen

    pipe = pipeline("text-generation", model=tiny_llama, tokenizer=tiny_tok)
    out = pipe(PROMPTS[0], custom_generate=rankgen, ranker=ConstantRanker(), lm_tokenizer=tiny_tok, beam_size=2,
               num_samples=2, rerank_every=2, seed=0, max_new_tokens=4, do_sample=False, return_full_text=False)
    want = tiny_tok.decode(run(tiny_llama, tiny_tok, PROMPTS[:1], 4, ranker=ConstantRanker(), beam_size=2,
                               num_samples=2, rerank_every=2, top_p=0.9, seed=0)[0], skip_special_tokens=True)
    assert out[0]["generated_text"] == want
