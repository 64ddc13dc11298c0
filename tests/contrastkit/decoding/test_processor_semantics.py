"""Processor, sampling and stopping semantics shared by every registered strategy.

* every strategy calls each user logits processor exactly once per step (iterating the registry,
  so a strategy registered later is covered, or must be listed in EXEMPT with a reason);
* ``do_sample=True``: contrastive search refuses it, the CD family samples;
* a processor that removes every plausible token falls back to the expert's order;
* repetition_penalty / stop strings reach every strategy through HF's own processors / criteria.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import contrastkit
from contrastkit.decoding.contrastive_decoding import bind_tokenizer, dola, icd
from contrastkit.decoding.contrastive_search import contrastive_search
from contrastkit.errors import UsageError
from contrastkit.registry import DECODERS
from contrastkit.testing import tiny_llama

PROMPTS = ["the cat saw a dog", "once upon a time there lived a king", "red tree"]
N = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_tok):
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(expert, tiny_tok)
    return expert, tiny_llama(1, init_range=0.3, num_layers=N)


def params_for(name: str, amateur) -> dict:
    """Parameters that make a registered strategy runnable on the tiny models."""
    import dataclasses

    from contrastkit.decoding.base import get_strategy

    fields = {f.name for f in dataclasses.fields(get_strategy(name).config_cls)}
    out = {}
    if "amateur" in fields:
        out["amateur"] = amateur
    if "refocus_ids" in fields:
        out["refocus_ids"] = [9, 10]
    if name == "beam":
        out["num_beams"] = 2
    if "ranker" in fields:  # rankgen: a deterministic in-test ranker instead of the Hub checkpoint
        out.update(ranker=FirstRanker(), beam_size=2, num_samples=2)
    if "lm_tokenizer" in fields:
        from contrastkit.testing import tiny_tokenizer

        out["lm_tokenizer"] = tiny_tokenizer()
    return out


class FirstRanker:
    """Scores every candidate 0 (ties keep the first): no checkpoint, no network."""

    def score(self, prefixes, continuations):
        return torch.zeros(len(continuations))

    def score_grouped(self, prefixes, candidates):
        return torch.zeros(len(prefixes), len(candidates) // len(prefixes))


# Strategies that cannot run on a bare tiny Llama with generic parameters; each needs a reason.
EXEMPT: dict[str, str] = {}


class Counter(LogitsProcessor):
    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        return scores


@pytest.mark.parametrize("name", sorted(DECODERS.names()))
def test_each_processor_called_once_per_step(models, tiny_tok, name):
    if name in EXEMPT:
        pytest.skip(EXEMPT[name])
    E, A = models
    counter = Counter()
    steps = 6
    res = contrastkit.generate(E, tiny_tok, PROMPTS[:2], name, max_new_tokens=steps, min_new_tokens=steps,
                               logits_processor=LogitsProcessorList([counter]), **params_for(name, A))
    assert [r.new_tokens for r in res] == [steps, steps]
    assert counter.calls == steps, f"{name}: {counter.calls} processor calls in {steps} steps"


def test_contrastive_search_refuses_do_sample(models, tiny_tok):
    E, _ = models
    ids = torch.tensor([tiny_tok(PROMPTS[0])["input_ids"]])
    with pytest.raises(UsageError, match="do_sample=True"):
        E.generate(ids, custom_generate=contrastive_search, do_sample=True, max_new_tokens=4)
    E.generation_config.do_sample = True  # as a model's generation_config.json may set it
    try:
        with pytest.raises(UsageError, match="do_sample=False"):
            E.generate(ids, custom_generate=contrastive_search, max_new_tokens=4)
        # contrastkit.generate always passes do_sample=False: deterministic contrastive search
        out = contrastkit.generate(E, tiny_tok, PROMPTS[0], "contrastive", max_new_tokens=4)
        assert out[0].new_tokens >= 1
    finally:
        E.generation_config.do_sample = False


@pytest.mark.parametrize("strategy", ["dola", "icd"])
def test_cd_family_samples_under_do_sample(models, tiny_tok, strategy):
    """do_sample=True maps to the family's sampling (4 seeds give several outputs; greedy gives one)."""
    E, A = models
    fn = {"dola": dola, "icd": icd}[strategy]
    extra = {"final_norm": True} if strategy == "dola" else {"amateur": A}  # normed exits: a soft contrast
    ids = torch.tensor([tiny_tok(PROMPTS[1])["input_ids"]])
    outs = set()
    for seed in range(4):
        torch.manual_seed(seed)
        out = E.generate(ids, custom_generate=fn, do_sample=True, top_k=0, max_new_tokens=8, min_new_tokens=8,
                         alpha=0.0, **extra)
        outs.add(tuple(out[0].tolist()))
    assert len(outs) > 1
    greedy = {tuple(E.generate(ids, custom_generate=fn, do_sample=False, max_new_tokens=8, min_new_tokens=8,
                               alpha=0.0, **extra)[0].tolist()) for _ in range(2)}
    assert len(greedy) == 1


class BanExpertTop(LogitsProcessor):
    """Bans, at every step, the token the expert ranks first (the only plausible one at alpha=1)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, scores):
        top = self.model(input_ids).logits[:, -1].argmax(-1)
        return scores.scatter(1, top[:, None], float("-inf"))


def test_processor_removing_every_plausible_token_falls_back_to_expert_order(models, tiny_tok):
    E, A = models
    ban = LogitsProcessorList([BanExpertTop(E)])
    greedy = [r.token_ids for r in contrastkit.generate(E, tiny_tok, PROMPTS, "greedy", max_new_tokens=6,
                                                         min_new_tokens=6, logits_processor=ban)]
    got = [r.token_ids for r in contrastkit.generate(E, tiny_tok, PROMPTS, "icd", amateur=A, alpha=1.0,
                                                      max_new_tokens=6, min_new_tokens=6, logits_processor=ban)]
    assert got == greedy  # the expert's second choice, as greedy with the same ban picks


@pytest.mark.parametrize("name", ["greedy", "sample", "beam", "contrastive", "icd", "dola", "lol"])
def test_repetition_penalty_and_records(models, tiny_tok, name):
    E, A = models
    params = params_for(name, A)
    res = contrastkit.generate(E, tiny_tok, PROMPTS[0], name, max_new_tokens=4, repetition_penalty=1.3, **params)
    procs = res[0].to_dict()["processors"]
    assert any(p.startswith("RepetitionPenaltyLogitsProcessor(penalty=1.3") for p in procs), procs
    assert res[0].to_dict()["repetition_penalty"] == 1.3
    default = contrastkit.generate(E, tiny_tok, PROMPTS[0], name, max_new_tokens=4, **params)[0].to_dict()
    expected = 1.2 if name == "dola" else 1.0  # dola's preset default (DoLa's code, HF docs)
    assert default["repetition_penalty"] == expected
    assert any("RepetitionPenalty" in p for p in default["processors"]) == (expected != 1.0)


def test_repetition_penalty_changes_tokens_and_rejects_bad_values(models, tiny_tok):
    E, _ = models
    a = contrastkit.generate(E, tiny_tok, PROMPTS, "greedy", max_new_tokens=24, min_new_tokens=24)
    b = contrastkit.generate(E, tiny_tok, PROMPTS, "greedy", max_new_tokens=24, min_new_tokens=24,
                             repetition_penalty=3.0)
    assert [r.token_ids for r in a] != [r.token_ids for r in b]
    for r in b:  # a strong penalty: no token of the continuation repeats more than a couple of times
        assert max(r.token_ids.count(t) for t in r.token_ids) <= 3
    with pytest.raises(UsageError, match="repetition_penalty must be > 0"):
        contrastkit.generate(E, tiny_tok, PROMPTS[0], "greedy", repetition_penalty=0)
    with pytest.raises(UsageError, match="stop must be"):
        contrastkit.generate(E, tiny_tok, PROMPTS[0], "greedy", stop=[""])


@pytest.mark.parametrize("name", ["greedy", "contrastive", "icd", "dola"])
def test_stop_strings_end_each_row(models, tiny_tok, name):
    """A row stops right after the token that completes a stop string; other rows go on."""
    E, A = models
    params = params_for(name, A)
    free = contrastkit.generate(E, tiny_tok, PROMPTS, name, max_new_tokens=12, min_new_tokens=12, **params)
    row = free[1]
    at = next(i for i in range(2, 12) if tiny_tok.decode(row.token_ids[i]).strip().isalpha())
    stop_text = tiny_tok.decode(row.token_ids[at])  # a whole-word token of row 1 (from its 3rd token on)
    got = contrastkit.generate(E, tiny_tok, PROMPTS, name, max_new_tokens=12, min_new_tokens=12, stop=stop_text,
                               **params)
    r1 = got[1]
    assert stop_text in r1.text and r1.text.endswith(stop_text)
    assert r1.token_ids == row.token_ids[:len(r1.token_ids)] and len(r1.token_ids) <= at + 1
    assert got[1].to_dict()["stop"] == [stop_text]
    for g, f in zip(got, free):  # every row is a prefix of its free run, cut at a stop or EOS
        assert g.token_ids == f.token_ids[:len(g.token_ids)]
    counter = Counter()  # alone, the row really stops generating there (not just trimmed afterwards)
    alone = contrastkit.generate(E, tiny_tok, PROMPTS[1], name, max_new_tokens=12, min_new_tokens=12, stop=stop_text,
                                 logits_processor=LogitsProcessorList([counter]), **params)[0]
    assert alone.token_ids == r1.token_ids and counter.calls == len(r1.token_ids)
