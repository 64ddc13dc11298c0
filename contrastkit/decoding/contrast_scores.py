"""Pure scoring functions of the contrastive-decoding family (CD, DoLa, ICD, LOL) on tensors.

Nothing here touches a model: every function maps fp32 tensors to fp32 tensors and works on any
leading shape (``(B, V)`` for one decoding step, ``(B, T, V)`` for scoring whole sequences); the
vocabulary is always the last dimension.

References (equation numbers are deliberately not cited: nobody on the project re-checked them; the
rules below were taken from the released code, ../shared/research/decoding.md sections 2.1-2.3):
    * CD: Li et al. 2022, "Contrastive Decoding", arXiv 2210.15097 section 3 and its code: plausibility
      head ``V_head = {v : p_E(v) >= alpha * max_w p_E(w)}`` and score ``log p_E - log p_A``.
    * DoLa: Chuang et al. 2023, arXiv 2309.03883 section 2 and its code / HF ``_dola_decoding``: early
      exit ``q_j = softmax(W h_j)``, premature layer ``M = argmax_j JSD(q_N || q_j)``, score
      ``log q_N - log q_M`` on ``V_head``.
    * ICD: Zhang et al. 2023, arXiv 2312.15710 and its code: the amateur is a hallucination-induced
      fine-tune of the expert; ``log p_E - log p_A`` with the CD plausibility constraint.
    * LOL: Chen et al. 2024, arXiv 2408.08769 (code not public; only the abstracts were read). Every
      LOL-specific piece here (weighted sum, early-exit lower layer, refocus term) is a
      reconstruction; docs/lol.md says which source each piece comes from.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

NEG_INF = float("-inf")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32: half and bfloat16 go up to fp32, fp64 stays fp64 (a float64 model scores in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def logprobs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` in fp32 (fp64 for fp64 logits). logits: (..., V) -> (..., V)."""
    logits = upcast(logits)
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def plausibility_remove_mask(expert_logprobs: torch.Tensor, alpha: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """CD's adaptive plausibility constraint (arXiv 2210.15097 section 3): True where a token is removed.

    A token survives iff ``log p_E(v) >= max_w log p_E(w) + log(alpha)``; the ``min_tokens_to_keep``
    most likely tokens always survive (HF's ``_relative_top_filter``). ``alpha = 0`` removes nothing,
    ``alpha = 1`` keeps only the argmax (and its exact ties).

    Args:
        expert_logprobs: (..., V) normalised expert log-probs.
        alpha: the relative threshold in [0, 1].
    Returns:
        (..., V) bool, True = removed.

    Example: log-probs ``log([0.6, 0.3, 0.05, 0.05])`` with alpha 0.1 keep tokens 0 and 1
    (0.05 < 0.1 * 0.6).
    """
    if alpha <= 0:
        return torch.zeros_like(expert_logprobs, dtype=torch.bool)
    top = expert_logprobs.max(dim=-1, keepdim=True).values  # (..., 1)
    thresh = top + math.log(alpha)
    if min_tokens_to_keep > 1:
        kth = expert_logprobs.topk(min_tokens_to_keep, dim=-1).values[..., -1:]  # (..., 1)
        thresh = torch.minimum(thresh, kth)
    return expert_logprobs < thresh


def early_exit_logprobs(
    hidden: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor], norm: Callable | None = None
) -> torch.Tensor:
    """DoLa early exit (arXiv 2309.03883 section 2): ``log_softmax(lm_head(norm(h)))``.

    Args:
        hidden: (..., d) residual-stream state at some layer.
        lm_head: the model's output projection (d -> V).
        norm: the final norm to apply first, or None (DoLa and HF apply ``lm_head`` directly).
    Returns:
        (..., V) fp32 log-probs.
    """
    if norm is not None:
        hidden = norm(hidden)
    return logprobs(lm_head(hidden))


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between two distributions given as log-probs (sum over the vocabulary).

    ``JSD = 1/2 KL(p || m) + 1/2 KL(q || m)`` with ``m = (p + q) / 2``; symmetric, 0 iff p = q, and
    in ``[0, ln 2]`` (ln 2 for disjoint supports). The result is clamped to that range: fp32 rounding
    puts saturated values up to ~1e-4 above ln 2, which would otherwise decide ties by noise.
    HF's DoLa averages over the vocabulary instead of summing: a constant 1/V factor that never
    changes which layer is selected.

    Args:
        logp, logq: (..., V) log-probs.
    Returns:
        (...) fp32 divergences.
    """
    logm = torch.logaddexp(logp, logq) - math.log(2.0)  # (..., V), broadcasting
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2)


LN2 = math.log(2.0)  # the largest possible JSD (natural log)


def first_near_max(values: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Index of the first of L values within ``tolerance`` of their maximum: (L, ...) -> (...) long.

    With ``tolerance=0`` this is ``argmax`` (first maximum). A tolerance makes the choice stable
    under float noise when several values are (nearly) tied, e.g. DoLa JSDs that all saturate at
    ln 2: without it, which layer wins would depend on 1e-6 rounding differences between batch
    layouts, and so would the score.
    """
    near = values >= values.amax(dim=0, keepdim=True) - tolerance  # (L, ...)
    return near.to(torch.uint8).argmax(dim=0)  # argmax returns the first maximal index


def select_premature(
    mature: torch.Tensor, exit_logprobs: Callable[[int], torch.Tensor], n_candidates: int, tolerance: float = 0.0,
    *, exit_logprobs_at: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa's dynamic premature layer (arXiv 2309.03883 section 2.2): the bucket layer whose early-exit
    distribution has the largest JSD from the mature layer's, chosen per row and position.

    This is the one implementation the decoder and the packed scorer use. Unlike HF (which averages
    the JSD over the batch and uses one layer for every row) the choice is made per row, so a batch
    gives exactly what its rows give one by one. Two passes keep at most one extra (..., V)
    candidate in memory: the JSD of every candidate, then the first candidate within ``tolerance``
    of the largest JSD (:func:`first_near_max`), whose log-probs are recomputed only where some
    position chose it.

    Saturation shortcut (``exit_logprobs_at`` given; ours, exact): a JSD never exceeds ln 2
    (:func:`js_divergence` clamps to it), so a position whose *first* candidate is within
    ``tolerance`` of ln 2 selects it whatever the others give. Only the other positions evaluate
    the remaining candidates, through ``exit_logprobs_at(i, flat_positions) -> (n, V)``. With
    DoLa's un-normed early exits on SmolLM2 ~95% of answer positions saturate at the first candidate.

    Args:
        mature: (..., V) log-probs of the final layer.
        exit_logprobs: ``i -> (..., V)`` early-exit log-probs of bucket candidate ``i`` (0-based).
        n_candidates: size L of the bucket (>= 1).
        tolerance: JSDs within this of the largest count as tied; the earliest candidate wins.
        exit_logprobs_at: ``(i, positions) -> (n, V)`` the same log-probs at flat positions (optional).
    Returns:
        ``(best, idx)``: (..., V) log-probs of the chosen candidate and (...) long indices into the bucket.

    Example: with mature = log[.5,.5], candidates log[.5,.5] (JSD 0) and log[.9,.1] (JSD > 0)
    the second one is chosen (idx 1), whatever the order of the bucket.
    """
    first = exit_logprobs(0)  # the usual winner under ties: kept, not recomputed
    if n_candidates == 1:
        return first, torch.zeros(first.shape[:-1], dtype=torch.long, device=first.device)
    if exit_logprobs_at is not None:
        return _select_premature_open(mature, first, exit_logprobs_at, n_candidates, tolerance)
    jsd = [js_divergence(mature, first)] + [js_divergence(mature, exit_logprobs(i)) for i in range(1, n_candidates)]
    idx = first_near_max(torch.stack(jsd), tolerance)  # (...)
    best = first
    # one host sync per step, as the decoding loop's own `unfinished.any()` already has
    for i in idx.unique().tolist():
        if i != 0:
            best = torch.where((idx == i)[..., None], exit_logprobs(i), best)
    return best, idx


def _select_premature_open(mature, first, exit_logprobs_at, n_candidates, tolerance):
    """:func:`select_premature` evaluating candidates 1.. only where candidate 0 is not provably chosen."""
    V = mature.shape[-1]
    jsd0 = js_divergence(mature, first).reshape(-1)  # (P,)
    idx = torch.zeros(jsd0.shape, dtype=torch.long, device=first.device)
    # positions where another candidate can win (1e-6: margin for fp32 rounding of ln 2 and of the subtraction)
    open_ = (jsd0 < LN2 - tolerance + 1e-6).nonzero().squeeze(-1)
    best = first
    if open_.numel():
        m = mature.reshape(-1, V)[open_]
        cands = [first.reshape(-1, V)[open_]] + [exit_logprobs_at(i, open_) for i in range(1, n_candidates)]
        jsd = torch.stack([jsd0[open_]] + [js_divergence(m, c) for c in cands[1:]])  # (L, n_open)
        pick = first_near_max(jsd, tolerance)  # (n_open,)
        idx[open_] = pick
        chosen = torch.stack(cands).gather(0, pick[None, :, None].expand(1, -1, V)).squeeze(0)  # (n_open, V)
        best = first.reshape(-1, V).clone()
        best[open_] = chosen
        best = best.reshape(first.shape)
    return best, idx.reshape(first.shape[:-1])


def fused_contrast_scores(
    expert: torch.Tensor,
    amateur: torch.Tensor,
    *,
    expert_low: torch.Tensor | None = None,
    amateur_low: torch.Tensor | None = None,
    refocus: torch.Tensor | None = None,
    lower_weight: float = 0.0,
    refocus_weight: float = 0.0,
    amateur_weight: float = 1.0,
    alpha: float = 0.1,
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """LOL's fused score (reconstruction of arXiv 2408.08769; CD / ICD / DoLa are special cases).

    ``F(v) = [E(v) - b A(v)] + lambda [E_j(v) - b A_j(v)] + gamma [R(v) - E(v)]`` on the plausibility
    head of the expert's final layer (``-inf`` elsewhere), where E/A are expert/amateur final-layer
    log-probs, E_j/A_j their early-exit log-probs at the lower layer j, R the expert's log-probs
    given the truth-refocusing instruction, b = ``amateur_weight`` (CD's ``st_coef``), lambda =
    ``lower_weight`` and gamma = ``refocus_weight``. lambda = gamma = 0 is ICD/CD exactly (the extra
    terms are not even computed); DoLa is the first term with A = the expert's premature layer.

    Args:
        expert, amateur: (..., V) final-layer log-probs.
        expert_low, amateur_low: (..., V) lower-layer log-probs (needed when lower_weight != 0).
        refocus: (..., V) refocused expert log-probs (needed when refocus_weight != 0).
        alpha: plausibility threshold (0 = no mask, as for multiple-choice scoring).
    Returns:
        (..., V) fp32 scores, ``-inf`` on removed tokens.

    Example: E = log[.6,.3,.1], A = log[.3,.6,.1], alpha = 0 -> F = [log 2, -log 2, 0].
    """
    scores = expert - amateur_weight * amateur
    if lower_weight != 0.0:
        if expert_low is None or amateur_low is None:
            raise ValueError("lower_weight != 0 needs expert_low and amateur_low")
        scores = scores + lower_weight * (expert_low - amateur_weight * amateur_low)
    if refocus_weight != 0.0:
        if refocus is None:
            raise ValueError("refocus_weight != 0 needs refocus log-probs")
        scores = scores + refocus_weight * (refocus - expert)
    remove = plausibility_remove_mask(expert, alpha, min_tokens_to_keep)
    return scores.masked_fill(remove, NEG_INF)


# Off the plausibility head, a token's score is set this far below the head's lowest score (plus the
# expert's log-prob, so the order there is the expert's): every token then has a finite score and
# the user's processors run once per step on one tensor. The head always outranks the rest.
OFF_HEAD_GAP = 1e4


def fill_off_head(fused: torch.Tensor, expert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) fused scores with -inf off the head -> (finite scores, (B, V) bool head mask)."""
    head = torch.isfinite(fused)
    floor = torch.where(head, fused, torch.inf).amin(-1, keepdim=True)  # (B, 1): the head is never empty
    off = floor - OFF_HEAD_GAP + (expert - expert.amax(-1, keepdim=True))
    return torch.where(head, fused, off), head


def select_tokens(scores: torch.Tensor, head: torch.Tensor, sampling: bool, temperature: float,
                  generator) -> torch.LongTensor:
    """Argmax (or sample) of the processed scores on the head; a row whose processors removed every head
    token picks among the rest (ordered by the expert's log-prob, as processed)."""
    alive = (head & torch.isfinite(scores)).any(dim=-1, keepdim=True)  # (B, 1)
    scores = scores.masked_fill(alive & ~head, float("-inf"))
    if not sampling:
        return scores.argmax(-1)
    probs = torch.softmax(scores / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
