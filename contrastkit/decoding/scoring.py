"""Per-token scores of given continuations under a strategy's scoring rule: ``contrastkit.score``.

A strategy's ``scorer`` has the signature::

    scorer(model, input_ids, attention_mask, config) -> (B, T-1) float32

where entry ``[b, t]`` scores token ``input_ids[b, t + 1]`` given ``input_ids[b, :t + 1]``.
The plain rule (greedy, sample, beam) is the model's log-probability. Contrastive strategies
register their own rule (e.g. log p_expert - log p_amateur).

Context/continuation tokenization follows lm-evaluation-harness (``HFLM._encode_pair``):
trailing whitespace of the context moves to the continuation, the pair is encoded as one
string, and the continuation is what follows the context's tokens. This is what makes our
TruthfulQA numbers comparable with lm-eval's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from contrastkit.decoding.base import DecodingStrategy, get_strategy
from contrastkit.errors import UsageError


def logprob_scorer(model, input_ids: torch.LongTensor, attention_mask: torch.Tensor, config=None) -> torch.Tensor:
    """log p(x_{t+1} | x_{<=t}) for every position: (B, T-1) fp32."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits  # (B, T, V)
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    return logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's pair encoding: returns (context_ids, continuation_ids)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ctx and tokenizer.bos_token_id is not None:  # empty context: condition on BOS, as lm-eval does
        return [tokenizer.bos_token_id], whole
    return ctx, whole[len(ctx):]


@dataclass
class ScoredContinuation:
    """Scores of one continuation: per-token scores and their sum."""

    token_ids: list[int]
    token_scores: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.token_scores))


@torch.no_grad()
def score(
    model,
    tokenizer,
    contexts: str | Sequence[str],
    continuations: Sequence[str] | Sequence[Sequence[str]],
    strategy: str | DecodingStrategy = "greedy",
    *,
    batch_size: int = 16,
    **params,
) -> list[list[ScoredContinuation]]:
    """Score continuations given contexts under ``strategy``'s scoring rule.

    Args:
        contexts: one context or a list of N contexts.
        continuations: for N contexts, a list of N lists of continuations (or, with one context, a flat list).
        strategy: any registered strategy; plain ones score with log-probs.
        batch_size: sequences per forward pass.
        **params: the strategy's parameters (e.g. the amateur for contrastive rules).

    Returns:
        ``result[i][j]`` scores continuation j of context i.
    """
    strat = get_strategy(strategy)
    config = strat.make_config(**params)
    scorer = strat.scorer or logprob_scorer
    if isinstance(contexts, str):
        contexts = [contexts]
        if continuations and isinstance(continuations[0], str):
            continuations = [continuations]  # type: ignore[list-item]
    if len(contexts) != len(continuations):
        raise UsageError(f"got {len(contexts)} contexts but {len(continuations)} continuation lists")
    flat: list[tuple[int, list[int], list[int]]] = []
    for i, (ctx, conts) in enumerate(zip(contexts, continuations)):
        for cont in conts:
            c_ids, x_ids = encode_pair(tokenizer, ctx, cont)
            if not x_ids:
                raise UsageError(f"context {i + 1}: continuation {cont!r} is empty after tokenization")
            flat.append((i, c_ids, x_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[ScoredContinuation]] = [[] for _ in contexts]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        seqs = [c + x for _, c, x in chunk]
        T = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for r, s in enumerate(seqs):
            input_ids[r, T - len(s):] = torch.tensor(s)
            mask[r, T - len(s):] = 1
        token_scores = scorer(model, input_ids.to(device), mask.to(device), config).cpu()  # (B, T-1)
        for r, (i, _, x) in enumerate(chunk):
            out[i].append(ScoredContinuation(x, token_scores[r, T - 1 - len(x):].tolist()))
    return out
