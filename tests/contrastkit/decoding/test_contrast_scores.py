"""Maths of the contrastive family on hand-built tensors (contrast_scores.py)."""

import math

import pytest
import torch

from contrastkit.decoding.contrast_scores import (
    OFF_HEAD_GAP,
    early_exit_logprobs,
    fill_off_head,
    first_near_max,
    fused_contrast_scores,
    js_divergence,
    logprobs,
    plausibility_remove_mask,
    select_premature,
    select_tokens,
)


def lp(*probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def rand_lp(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g) * 3, dim=-1)


def test_plausibility_worked_example():
    remove = plausibility_remove_mask(lp(0.6, 0.3, 0.05, 0.05), 0.1)
    assert remove.tolist() == [False, False, True, True]


def test_plausibility_alpha_bounds_and_min_keep():
    x = rand_lp(3, 50)
    assert not plausibility_remove_mask(x, 0.0).any()
    keep = ~plausibility_remove_mask(x, 1.0)
    assert keep.sum(-1).tolist() == [1, 1, 1]
    assert torch.equal(keep.float().argmax(-1), x.argmax(-1))
    keep5 = ~plausibility_remove_mask(x, 1.0, min_tokens_to_keep=5)
    assert keep5.sum(-1).tolist() == [5, 5, 5]
    # reference: keep v iff p(v) >= alpha * max p
    p = x.exp()
    ref = p >= 0.3 * p.max(-1, keepdim=True).values
    assert torch.equal(~plausibility_remove_mask(x, 0.3), ref)


def test_jsd_reference_nonnegative_symmetric():
    p, q = rand_lp(4, 30, seed=1), rand_lp(4, 30, seed=2)
    P, Q = p.exp().double(), q.exp().double()
    M = (P + Q) / 2
    ref = 0.5 * (P * (P / M).log()).sum(-1) + 0.5 * (Q * (Q / M).log()).sum(-1)
    got = js_divergence(p, q)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert (got >= 0).all()
    assert torch.allclose(got, js_divergence(q, p), atol=1e-6)
    assert torch.allclose(js_divergence(p, p), torch.zeros(4), atol=1e-6)
    assert (got <= math.log(2) + 1e-6).all()


def test_select_premature_matches_argmax_and_single_bucket():
    mature = rand_lp(5, 40, seed=3)
    cands = torch.stack([rand_lp(5, 40, seed=s) for s in (4, 5, 6)])  # (L, B, V)
    best, idx = select_premature(mature, lambda i: cands[i], 3)
    ref = torch.stack([js_divergence(mature, c) for c in cands]).argmax(0)
    assert torch.equal(idx, ref)
    for r in range(5):
        assert torch.equal(best[r], cands[idx[r], r])
    best1, idx1 = select_premature(mature, lambda i: cands[i], 1)
    assert idx1.tolist() == [0] * 5 and torch.equal(best1, cands[0])
    # the mature layer itself in the bucket has JSD 0 and is never picked over a different layer
    both = torch.stack([mature, cands[0]])
    assert select_premature(mature, lambda i: both[i], 2)[1].tolist() == [1] * 5


def test_select_premature_hand_worked_separates_wrong_rules():
    """Hand-computed JSDs: the right rule (largest JSD, per row) differs from 'first', 'last', 'smallest'.

    mature = [.5, .5]; row 0's bucket: [.5, .5] (JSD 0), [.9, .1] (JSD 0.1017), [.6, .4] (JSD 0.0051).
    Row 1 has the bucket in another order: [.6, .4], [.5, .5], [.9, .1] -> index 2.
    """
    mature = lp(0.5, 0.5).expand(2, 2)
    rows = [[(0.5, 0.5), (0.9, 0.1), (0.6, 0.4)], [(0.6, 0.4), (0.5, 0.5), (0.9, 0.1)]]
    cands = torch.stack([torch.stack([lp(*rows[r][i]) for r in range(2)]) for i in range(3)])  # (3, 2, 2)
    best, idx = select_premature(mature, lambda i: cands[i], 3)
    assert idx.tolist() == [1, 2]
    assert torch.allclose(best.exp(), torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    jsd = js_divergence(mature[0], lp(0.9, 0.1))
    P, M = torch.tensor([0.9, 0.1]), torch.tensor([0.7, 0.3])
    ref = 0.5 * (P * (P / M).log()).sum() + 0.5 * (0.5 * (0.5 / M).log()).sum()
    assert abs(jsd.item() - ref.item()) < 1e-6 and abs(ref.item() - 0.1017) < 1e-3
    calls = []
    select_premature(mature, lambda i: calls.append(i) or cands[i], 3)
    assert calls.count(0) == 1  # the first candidate is computed once, the winners recomputed only where chosen


def test_first_near_max_breaks_near_ties_toward_the_first():
    jsd = torch.tensor([[0.69310, 0.5, 0.1], [0.69315, 0.6, 0.1], [0.2, 0.60005, 0.1]])  # (L=3, 3 positions)
    assert first_near_max(jsd, 0.0).tolist() == [1, 2, 0]  # plain argmax (first maximum on exact ties)
    assert first_near_max(jsd, 1e-4).tolist() == [0, 1, 0]  # within 1e-4 of the max: the earliest layer
    assert first_near_max(jsd, 1.0).tolist() == [0, 0, 0]
    # the rule is stable: noise far below the tolerance never changes the choice
    for seed in range(5):
        noisy = jsd + 1e-6 * torch.randn(jsd.shape, generator=torch.Generator().manual_seed(seed))
        assert first_near_max(noisy, 1e-4).tolist() == [0, 1, 0]


def test_fused_worked_example_and_special_cases():
    E, A = lp(0.6, 0.3, 0.1), lp(0.3, 0.6, 0.1)
    F = fused_contrast_scores(E, A, alpha=0.0)
    assert torch.allclose(F, torch.tensor([math.log(2), -math.log(2), 0.0]), atol=1e-6)
    # alpha 0.5 removes token 2 (0.1 < 0.3)
    assert fused_contrast_scores(E, A, alpha=0.5)[2] == float("-inf")
    # amateur == expert: zero on the head, -inf elsewhere
    x = rand_lp(2, 3, 20, seed=7)
    F = fused_contrast_scores(x, x, expert_low=x, amateur_low=x, lower_weight=0.7, alpha=0.1)
    head = ~plausibility_remove_mask(x, 0.1)
    assert torch.equal(F[head], torch.zeros_like(F[head]))
    assert torch.isinf(F[~head]).all()


def test_fused_general_form_matches_formula():
    E, A, El, Al, R = (rand_lp(2, 25, seed=s) for s in range(5))
    lam, gam, b = 0.4, 0.3, 0.8
    F = fused_contrast_scores(E, A, expert_low=El, amateur_low=Al, refocus=R, lower_weight=lam,
                              refocus_weight=gam, amateur_weight=b, alpha=0.0)
    ref = (E - b * A) + lam * (El - b * Al) + gam * (R - E)
    assert torch.allclose(F, ref, atol=1e-6)
    # lambda = gamma = 0: the ICD score, whatever the extra inputs are
    icd = fused_contrast_scores(E, A, expert_low=El, amateur_low=Al, refocus=R, alpha=0.1)
    assert torch.equal(icd, fused_contrast_scores(E, A, alpha=0.1))
    with pytest.raises(ValueError):
        fused_contrast_scores(E, A, lower_weight=1.0)


def test_early_exit_and_temperature():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=False)
    norm = torch.nn.LayerNorm(8)
    h = torch.randn(3, 8)
    assert torch.allclose(early_exit_logprobs(h, head), torch.log_softmax(head(h), -1))
    assert torch.allclose(early_exit_logprobs(h, head, norm), torch.log_softmax(head(norm(h)), -1))
    logits = torch.randn(2, 30)
    assert torch.allclose(logprobs(logits, 0.5), torch.log_softmax(logits * 2, -1))


def test_off_head_fill_and_selection_hand_worked():
    """Head tokens 0 and 2 (fused 2 and 1); off-head tokens 1 and 3 ordered by the expert (p .3 > .05)."""
    inf = float("inf")
    fused = torch.tensor([[2.0, -inf, 1.0, -inf]])
    E = lp(0.5, 0.3, 0.15, 0.05)[None]
    filled, head = fill_off_head(fused, E)
    assert head.tolist() == [[True, False, True, False]]
    expect_off = [1 - OFF_HEAD_GAP + math.log(0.3 / 0.5), 1 - OFF_HEAD_GAP + math.log(0.05 / 0.5)]
    assert torch.allclose(filled[0, [1, 3]], torch.tensor(expect_off))
    assert filled[0, 0] == 2.0 and filled[0, 2] == 1.0
    assert select_tokens(filled, head, False, 1.0, None).tolist() == [0]
    banned = filled.clone()
    banned[0, [0, 2]] = -inf  # a processor removed every head token: the expert's next choice (1), not 0 or 3
    assert select_tokens(banned, head, False, 1.0, None).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    draws = {select_tokens(filled, head, True, 5.0, g).item() for _ in range(200)}
    assert draws == {0, 2}  # sampling never leaves the head while the head is alive
