"""Over-generate-and-rerank (RankGen, arXiv 2205.09726 section 2.3 and Table 3) and n-best reranking.

* :func:`rerank`: draw ``n`` nucleus samples per prompt (one generator per prompt, seeded with
  ``seed``: the very samples the ``rankgen`` strategy draws with B=1, N=n, L=max_new_tokens), score
  them with a ranker and return them best first. The paper's setting: n=20, top_p=0.9.
* :func:`rerank_candidates`: rerank any given n-best lists (HF beam search outputs, samples from
  elsewhere) with a ranker.

With an ``lm`` ranker this is the paper's "re-rank by LM perplexity" baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from contrastkit.errors import UsageError, check_range


@dataclass
class Reranked:
    """One prompt's candidates, best first: ``text``/``score`` are the winner's."""

    prompt: str
    text: str
    score: float
    candidates: list[tuple[str, float]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


def rerank_candidates(ranker, prefixes: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[tuple[str, float]]]:
    """Score every candidate in one ranker call; per prefix, ``(text, score)`` sorted best first (stable on ties)."""
    from contrastkit.rankers import get_ranker

    if len(prefixes) != len(candidates):
        raise UsageError(f"{len(prefixes)} prefixes but {len(candidates)} candidate lists")
    if any(len(c) == 0 for c in candidates):
        raise UsageError("every prefix needs at least one candidate")
    ranker = get_ranker(ranker)
    flat_p = [p for p, cs in zip(prefixes, candidates) for _ in cs]
    flat_c = [c for cs in candidates for c in cs]
    scores = torch.as_tensor(ranker.score(flat_p, flat_c), dtype=torch.float32).tolist()
    out, i = [], 0
    for cs in candidates:
        s = scores[i:i + len(cs)]
        i += len(cs)
        order = sorted(range(len(cs)), key=lambda j: -s[j])
        out.append([(cs[j], s[j]) for j in order])
    return out


def rerank(model, tokenizer, prompts: str | Sequence[str], ranker, n: int = 20, *, max_new_tokens: int = 115,
           top_p: float = 0.9, temperature: float = 1.0, seed: int = 0) -> list[Reranked]:
    """Over-generate ``n`` nucleus samples per prompt and rerank them (best first).

    Example:
        >>> rerank(model, tok, ["The river"], "lm", n=20, max_new_tokens=64)[0].text  # doctest: +SKIP
    """
    from contrastkit.generation import generate
    from contrastkit.rankers import get_ranker

    check_range("n", n, 1)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ranker = get_ranker(ranker)
    results = []
    for prompt in prompts:  # one batch of n rows per prompt, one generator seeded with `seed`
        samples = generate(model, tokenizer, [prompt] * n, "sample", max_new_tokens=max_new_tokens, top_p=top_p,
                           temperature=temperature, seed=seed, batch_size=n)
        texts = [s.text for s in samples]
        ranked = rerank_candidates(ranker, [samples[0].prompt], [texts])[0]
        best = next(i for i, t in enumerate(texts) if t == ranked[0][0])
        results.append(Reranked(prompt, ranked[0][0], ranked[0][1], ranked, samples[best].token_ids))
    return results
