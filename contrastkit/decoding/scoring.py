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
from contrastkit.decoding.contrast_scores import upcast
from contrastkit.errors import UsageError
from contrastkit.generation import left_pad


def logprob_scorer(model, input_ids: torch.LongTensor, attention_mask: torch.Tensor, config=None) -> torch.Tensor:
    """log p(x_{t+1} | x_{<=t}) for every position: (B, T-1) fp32."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits  # (B, T, V)
    logprobs = torch.log_softmax(upcast(logits[:, :-1]), dim=-1)  # (B, T-1, V)
    return logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)


def prefix_logprob_scorer(model, prefix_ids: torch.LongTensor, cont_ids: torch.LongTensor, config=None) -> torch.Tensor:
    """log-probs (n, k) of n right-padded answers after ONE (1, P) prompt whose KV cache is shared by all."""
    n, k = cont_ids.shape
    P = prefix_ids.shape[1]
    out = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
    logprobs = torch.log_softmax(upcast(out.logits[:, -1:]), dim=-1).expand(n, -1, -1)  # (n, 1, V)
    if k > 1:
        cache = out.cache
        cache.batch_repeat_interleave(n)
        pos = P + torch.arange(k - 1, device=cont_ids.device).expand(n, -1)
        mask = torch.ones(n, P + k - 1, dtype=torch.long, device=cont_ids.device)
        rest = model(input_ids=cont_ids[:, :-1], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        logprobs = torch.cat([logprobs, torch.log_softmax(upcast(rest.logits), dim=-1)], 1)  # (n, k, V)
    return logprobs.gather(-1, cont_ids[..., None]).squeeze(-1)


logprob_scorer.prefix_scorer = prefix_logprob_scorer


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
    """Scores of one continuation: per-token scores, their sum (``total``), mean and count.

    MC metrics (TruthfulQA MC1/2/3, lm-eval loglikelihood) rank by the sum, which favours short
    continuations; the mean per token is the length-normalised view. ``to_dict()`` gives the same
    fields as ``contrastkit score``'s JSON.
    """

    token_ids: list[int]
    token_scores: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.token_scores))

    @property
    def sum(self) -> float:
        """Same as ``total``: the sum of the per-token scores."""
        return self.total

    @property
    def num_tokens(self) -> int:
        return len(self.token_scores)

    @property
    def mean(self) -> float:
        """The sum divided by the number of tokens (0.0 for no tokens)."""
        return self.total / self.num_tokens if self.num_tokens else 0.0

    def to_dict(self) -> dict:
        return {"sum": self.total, "mean": self.mean, "num_tokens": self.num_tokens,
                "token_ids": list(self.token_ids), "token_scores": list(self.token_scores)}


@torch.no_grad()
def score(
    model,
    tokenizer,
    contexts: str | Sequence[str],
    continuations: Sequence[str] | Sequence[Sequence[str]],
    strategy: str | DecodingStrategy = "greedy",
    *,
    batch_size: int = 16,
    share_prompt: bool = True,
    **params,
) -> list[list[ScoredContinuation]]:
    """Score continuations given contexts under ``strategy``'s scoring rule.

    Args:
        contexts: one context or a list of N contexts.
        continuations: for N contexts, a list of N lists of continuations (or, with one context, a flat list).
        strategy: any registered strategy; plain ones score with log-probs.
        batch_size: sequences per forward pass.
        share_prompt: run each context once and expand its KV cache over its continuations (when the
            strategy's scorer supports it: plain log-probs and the contrastive family); False scores
            every (context + continuation) sequence on its own, as a left-padded batch.
        **params: the strategy's parameters (e.g. the amateur for contrastive rules).

    Returns:
        ``result[i][j]`` scores continuation j of context i.
    """
    strat = get_strategy(strategy)
    config = strat.make_config(**params)
    scorer = strat.scorer or logprob_scorer
    if "_contrastkit_tokenizer" not in model.__dict__:  # e.g. LOL's refocus instruction is text
        from contrastkit.decoding.amateur import bind_tokenizer

        bind_tokenizer(model, tokenizer)
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
    if share_prompt and getattr(scorer, "prefix_scorer", None) is not None:
        flat = _score_shared_prompts(scorer.prefix_scorer, model, flat, config, batch_size, pad, device, out)
    for start in range(0, len(flat), batch_size):  # the pairs the shared-prompt path did not take
        chunk = flat[start:start + batch_size]
        seqs = [c + x for _, c, x in chunk]
        input_ids, mask = left_pad(tokenizer, seqs, device)
        T = input_ids.shape[1]
        token_scores = scorer(model, input_ids, mask, config).cpu()  # (B, T-1)
        for r, (i, _, x) in enumerate(chunk):
            out[i].append(ScoredContinuation(x, token_scores[r, T - 1 - len(x):].tolist()))
    return out


def _score_shared_prompts(prefix_scorer, model, flat, config, batch_size, pad, device, out):
    """Score the continuations of each context in batches that share the context's KV cache.

    Pairs are grouped by (context, context tokens): lm-eval's pair encoding can, in rare merge
    cases, give one continuation different context tokens, and that pair then gets its own prompt
    pass. Results land in ``out[i]`` in input order. Returns the pairs left for the flat path (none).
    """
    groups: dict[tuple, list] = {}
    counts: dict[int, int] = {}
    for i, c_ids, x_ids in flat:
        groups.setdefault((i, tuple(c_ids)), []).append((counts.get(i, 0), x_ids))
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        out[i].extend([None] * n)
    for (i, prefix), items in groups.items():
        prefix_ids = torch.tensor([prefix], dtype=torch.long, device=device)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            k = max(len(x) for _, x in chunk)
            cont = torch.full((len(chunk), k), pad, dtype=torch.long)
            for r, (_, x) in enumerate(chunk):  # right padding: the tail never influences the real tokens
                cont[r, :len(x)] = torch.tensor(x)
            token_scores = prefix_scorer(model, prefix_ids, cont.to(device), config).cpu()  # (n, k)
            for r, (j, x) in enumerate(chunk):
                out[i][j] = ScoredContinuation(x, token_scores[r, :len(x)].tolist())
    return []
