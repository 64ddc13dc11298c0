"""RankGen beam search (Krishna et al. 2022, arXiv 2205.09726 section 2.3, Fig. 5, App. A.3).

Per prompt, keep B beams; every round each beam draws N nucleus samples of L tokens; a ranker
scores every candidate (the whole continuation so far, against the original prefix) and the
best B survive. B=1, L=max_new_tokens is over-generate-and-rerank; B=N=1 is plain nucleus
sampling (no ranker call). Defaults are the paper's best setting B=2, N=10, L=20, top_p 0.9,
temperature 1 (the reference repo's ``max_length=115`` is ``max_new_tokens`` here).

Choices where the paper and the reference repo (``RankGenGenerator.beam_search``) differ or are
silent, ours and documented:

* Start: B identical empty beams, so the first round draws B·N samples from the prompt (repo;
  Fig. 5 starts from one beam).
* Finished beams (a stopping criterion fired, e.g. EOS) are carried over unchanged as one
  candidate each round (repo); their N rows keep emitting the pad token and only the first copy
  is scored, so a finished beam never fills two slots.
* Ties in the ranker score keep the earlier candidate (stable sort); candidate order is
  beam-major, sample-minor.
* Works on tokens, not re-tokenized text (the repo re-tokenizes ``ctx + text`` every round): the
  prompt is prefilled once, the B·N rows share its KV cache (repeated once), every step is one
  batched forward of all rows, and after a rerank the kept beams' KV rows are gathered
  (``cache.batch_select_indices``) and carried on; nothing is ever re-prefilled.
* Seeding: one ``torch.Generator`` per prompt, all seeded with ``seed``, so a prompt's output does
  not depend on the other prompts in its batch (a batch equals one-by-one runs).

The user's logits processors are called once per step on all rows; stopping criteria are
honoured per row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import LogitsProcessor

from contrastkit.decoding.base import (
    finish,
    grow_mask,
    keep_finished_padded,
    prefill_positions,
    register_strategy,
)
from contrastkit.decoding.plain import sampling_warpers
from contrastkit.errors import UsageError, check_range

DEFAULT_RANKER = "rankgen:kalpeshk2011/rankgen-t5-xl-all"
_RANKERS: dict = {}
_TOKENIZERS: dict = {}


@dataclass
class RankGenConfig:
    """Parameters of RankGen beam search (defaults: arXiv 2205.09726 best setting, App. A.3)."""

    ranker: Any = field(default=DEFAULT_RANKER, metadata={
        "help": "Ranker: NAME[:PATH] with NAME in rankgen|embedding|lm, a directory saved by `contrastkit train "
                "ranker`, or a ranker object. Default: the paper's RankGen-XL-all (Hub; needs network once)."})
    beam_size: int = field(default=2, metadata={"help": "Beams kept after each rerank, B >= 1 (paper: 2)."})
    num_samples: int = field(default=10, metadata={"help": "Samples drawn per beam each round, N >= 1 (paper: 10)."})
    rerank_every: int = field(default=20, metadata={
        "help": "Tokens per round, L >= 1 (paper: 20; >= max_new_tokens = over-generate-and-rerank)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus mass in (0, 1] (paper: 0.9)."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature, > 0 (paper: 1.0)."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the per-prompt generators (None: global RNG)."})
    lm_tokenizer: Any = field(default=None, metadata={
        "help": "The LM's tokenizer (to show the ranker text); default: loaded from the model's own folder."})

    def __post_init__(self):
        check_range("beam_size", self.beam_size, 1)
        check_range("num_samples", self.num_samples, 1)
        check_range("rerank_every", self.rerank_every, 1)
        check_range("top_p", self.top_p, 0, 1, lo_open=True)
        check_range("temperature", self.temperature, 0, None, lo_open=True)


def _plain_kwargs(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}  # no deepcopy of objects


# ---------------------------------------------------------------------------------------------
# Pure selection functions
# ---------------------------------------------------------------------------------------------


def select_beams(scores: torch.Tensor, duplicate: torch.Tensor, beam_size: int) -> torch.Tensor:
    """Indices (b, B) of the best ``beam_size`` candidates per prompt, best first.

    Args:
        scores: (b, K) ranker scores.
        duplicate: (b, K) bool, True for extra copies of a finished beam (never selected).
        beam_size: B.
    Ties keep the earlier candidate (stable sort).
    """
    masked = scores.float().masked_fill(duplicate, float("-inf"))
    return torch.sort(masked, dim=-1, descending=True, stable=True).indices[:, :beam_size]


def duplicate_copies(finished: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(R,) bool: rows of a beam finished before this round, except its first copy."""
    within = torch.arange(finished.shape[0], device=finished.device) % num_samples
    return finished & (within != 0)


def resolve_ranker(spec):
    from contrastkit.rankers import get_ranker

    if isinstance(spec, str):
        if spec not in _RANKERS:  # keyed by the spec string: a name/path fully determines the loaded ranker
            _RANKERS[spec] = get_ranker(spec)
        return _RANKERS[spec]
    return get_ranker(spec)


def resolve_tokenizer(model, tokenizer):
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    path = tokenizer or getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not path:
        raise UsageError("rankgen needs the LM's tokenizer to show text to the ranker: pass lm_tokenizer=...")
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        try:
            _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
        except OSError:
            raise UsageError(f"rankgen could not load the tokenizer of '{path}': pass lm_tokenizer=...") from None
    return _TOKENIZERS[path]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@register_strategy("rankgen", RankGenConfig,
                   "RankGen beam search: B beams x N samples of L tokens, reranked by a ranker (arXiv 2205.09726)",
                   hf_kwargs=_plain_kwargs)
def rankgen(
    model, input_ids, logits_processor, stopping_criteria, generation_config,
    ranker=DEFAULT_RANKER, beam_size: int = 2, num_samples: int = 10, rerank_every: int = 20, top_p: float = 0.9,
    temperature: float = 1.0, seed: int | None = None, lm_tokenizer=None, **model_kwargs,
):
    """RankGen beam search as a transformers ``custom_generate`` callable; returns the best beam per prompt.

    Example:
        >>> out = model.generate(ids, custom_generate=rankgen, ranker=my_ranker, lm_tokenizer=tok,
        ...                      max_new_tokens=115, seed=0)  # doctest: +SKIP
    """
    cfg = RankGenConfig(ranker, beam_size, num_samples, rerank_every, top_p, temperature, seed, lm_tokenizer)
    single = beam_size * num_samples == 1
    rk = None if single else resolve_ranker(cfg.ranker)
    tok = None if single else resolve_tokenizer(model, cfg.lm_tokenizer)
    with torch.no_grad():
        return _beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config,
                            cfg, rk, tok, model_kwargs)


class _Rows:
    """The B·N live rows: token ids, mask, positions, finished flags, and their shared KV cache."""

    def __init__(self, model, input_ids, model_kwargs, K: int):
        mask = model_kwargs.get("attention_mask")
        self.mask = torch.ones_like(input_ids) if mask is None else mask
        positions = model_kwargs.get("position_ids")
        if positions is None:
            positions = prefill_positions(input_ids, self.mask)
        self.cache = model_kwargs.get("cache") or DynamicCache(config=model.config)
        out = model(input_ids=input_ids, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                    use_cache=True, logits_to_keep=1)  # the prompt, prefilled once
        self.cache.batch_repeat_interleave(K)  # every candidate row starts from the same prefix KV
        self.logits = out.logits[:, -1].float().repeat_interleave(K, dim=0)  # (R, V)
        self.ids = input_ids.repeat_interleave(K, dim=0)  # (R, T)
        self.mask = self.mask.repeat_interleave(K, dim=0)
        self.next_position = positions[:, -1:].repeat_interleave(K, dim=0) + 1  # (R, 1)
        self.unfinished = torch.ones(self.ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def gather(self, rows: torch.LongTensor) -> None:
        """Keep (and repeat) ``rows``: ids, flags and the KV cache rows move together."""
        self.ids, self.mask = self.ids[rows], self.mask[rows]
        self.next_position, self.unfinished = self.next_position[rows], self.unfinished[rows]
        self.cache.batch_select_indices(rows)

    def step(self, model, tokens: torch.LongTensor) -> None:
        """Feed the last sampled token of every row (one batched forward)."""
        self.mask = grow_mask(self.mask)
        out = model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.next_position,
                    cache=self.cache, use_cache=True)
        self.next_position = self.next_position + 1
        self.logits = out.logits[:, -1].float()


def _sample(probs: torch.Tensor, generators, K: int) -> torch.LongTensor:
    """(R,) tokens; with generators, prompt j's K rows draw from its own generator."""
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    draws = [torch.multinomial(probs[j * K:(j + 1) * K], 1, generator=g) for j, g in enumerate(generators)]
    return torch.cat(draws).squeeze(1)  # one draw per prompt (not per row or candidate)


def _rerank(rows: _Rows, cfg, ranker, tok, prefix_texts, T: int, finished_before: torch.Tensor) -> torch.Tensor:
    """Score every candidate in one ranker call, keep the best B per prompt; returns (b, B) global row ids."""
    K = cfg.beam_size * cfg.num_samples
    b, device = rows.ids.shape[0] // K, rows.ids.device
    if K == 1:
        return torch.arange(b, device=device)[:, None]
    texts = tok.batch_decode(rows.ids[:, T:].tolist(), skip_special_tokens=True)
    scores = ranker.score_grouped(prefix_texts, texts).to(device)  # (b, K)
    dup = duplicate_copies(finished_before, cfg.num_samples).view(b, K)
    keep = select_beams(scores, dup, cfg.beam_size)  # (b, B)
    return keep + torch.arange(b, device=device)[:, None] * K


def _beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config, cfg, ranker, tok,
                 model_kwargs):
    b, T = input_ids.shape  # prompts, prompt length
    N, K = cfg.num_samples, cfg.beam_size * cfg.num_samples
    rows = _Rows(model, input_ids, model_kwargs, K)
    prefix_texts = None
    if tok is not None:
        prompt_ids = [row[m.bool()].tolist() for row, m in zip(input_ids, rows.mask[::K])]  # once per call
        prefix_texts = tok.batch_decode(prompt_ids, skip_special_tokens=True)
    warpers = sampling_warpers(cfg.temperature, 0, cfg.top_p)
    generators = None
    if cfg.seed is not None:
        generators = [torch.Generator(device=input_ids.device).manual_seed(cfg.seed) for _ in range(b)]
    finished_before = torch.zeros(b * K, dtype=torch.bool, device=input_ids.device)
    in_round = 0
    while True:
        scores = logits_processor(rows.ids, rows.logits)  # (R, V): each user processor once per step
        probs = torch.softmax(warpers(rows.ids, scores), dim=-1)
        tokens = keep_finished_padded(_sample(probs, generators, K), rows.unfinished, generation_config)
        rows.ids = torch.cat([rows.ids, tokens[:, None]], dim=-1)
        rows.unfinished &= ~stopping_criteria(rows.ids, scores)
        in_round += 1
        done = not rows.unfinished.any()
        if done or in_round == cfg.rerank_every:
            keep = _rerank(rows, cfg, ranker, tok, prefix_texts, T, finished_before)  # (b, B)
            if done:
                return finish(generation_config, rows.ids[keep[:, 0]])
            expand = keep.reshape(-1).repeat_interleave(N)  # (R,): each kept beam -> N rows
            rows.gather(expand)
            tokens = tokens[expand]
            finished_before = ~rows.unfinished
            in_round = 0
        rows.step(model, tokens)


# ---------------------------------------------------------------------------------------------
# Ranker scores inside HF's own beam search
# ---------------------------------------------------------------------------------------------


class RankerBeamRescorer(LogitsProcessor):
    """Adds ranker scores to HF ``num_beams`` search: hypotheses rank by log-prob + weight × ranker score.

    Every ``rerank_every`` generated tokens each beam's continuation so far is scored against its
    prompt and ``weight × (score now − score of its ancestor at the previous rerank point)`` is
    added to that beam's row of log-probs. HF accumulates the processed log-probs into the beam
    score, so the differences telescope: a hypothesis scores sum log p + weight × (its latest
    ranker score). The ancestor's score is looked up by its tokens, so HF's beam reordering
    between steps needs no hook. ``weight=0`` is plain HF beam search. The RankGen paper
    (arXiv 2205.09726 section 2.3) reranks sampled beams instead; this in-search form is ours.

    Use one instance per ``generate`` call (the prompt length is taken from the first call).

    Example:
        >>> proc = RankerBeamRescorer(ranker, tok, weight=1.0, rerank_every=10)  # doctest: +SKIP
        >>> model.generate(ids, num_beams=4, logits_processor=LogitsProcessorList([proc]))  # doctest: +SKIP
    """

    def __init__(self, ranker, tokenizer, weight: float = 1.0, rerank_every: int = 20):
        check_range("rerank_every", rerank_every, 1)
        self.ranker, self.tokenizer, self.weight, self.rerank_every = ranker, tokenizer, float(weight), rerank_every
        self.prompt_length: int | None = None
        self._scores: dict[tuple, float] = {}  # continuation tokens at the last rerank point -> ranker score

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        cur = input_ids.shape[1]
        if self.prompt_length is None or cur <= self.prompt_length:
            self.prompt_length, self._scores = cur, {}
        gen = cur - self.prompt_length
        if self.weight == 0 or gen == 0 or gen % self.rerank_every:
            return scores
        P, L = self.prompt_length, self.rerank_every
        rows = input_ids[:, P:].tolist()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        prefixes = self.tokenizer.batch_decode(input_ids[:, :P].tolist(), skip_special_tokens=True)
        now = torch.as_tensor(self.ranker.score(prefixes, texts), dtype=torch.float32)  # (n,)
        before = torch.tensor([self._scores.get(tuple(r[:gen - L]), 0.0) for r in rows])  # beam bookkeeping
        self._scores = {tuple(r): s for r, s in zip(rows, now.tolist())}
        return scores + (self.weight * (now - before)).to(scores.device, scores.dtype)[:, None]
