"""CoACT's pure tensor functions on hand-built tensors (tier a) and invariants (tier b)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.alignment.coact_losses import (
    class_means,
    consistency_loss,
    ema_update_,
    masked_logits,
    supcon_loss,
)


def _supcon_reference(features: torch.Tensor, labels: torch.Tensor, tau: float, base_tau: float) -> float:
    """Slow from-scratch SupCon (Khosla et al. eq. 2, L_out), shares no code with the package."""
    B, V, _ = features.shape
    pts = [(features[b, v], int(labels[b])) for v in range(V) for b in range(B)]
    total = 0.0
    for i, (zi, yi) in enumerate(pts):
        denom = sum(math.exp(float(zi @ zk) / tau) for k, (zk, _) in enumerate(pts) if k != i)
        pos = [k for k, (_, yk) in enumerate(pts) if k != i and yk == yi]
        if pos:
            total += -(tau / base_tau) * sum(float(zi @ pts[k][0]) / tau - math.log(denom) for k in pos) / len(pos)
    return total / len(pts)


def test_supcon_hand_computed():
    """tau = 1, one view: z1=(1,0), z2=(0,1), z3=(1,0); labels 0, 0, 1.

    anchor 1: others have sims 0 (z2, positive) and 1 (z3): -(0 - log(1 + e)) = log(1 + e)
    anchor 2: others have sims 0 (z1, positive) and 0 (z3):  -(0 - log 2)      = log 2
    anchor 3: no positive -> 0 (still counted in the mean over 3 anchors)
    loss = (log(1 + e) + log 2) / 3 = 0.6418...
    """
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    y = torch.tensor([0, 0, 1])
    want = (math.log(1 + math.e) + math.log(2)) / 3
    assert supcon_loss(z, y, temperature=1.0).item() == pytest.approx(want, abs=1e-6)


def test_supcon_temperature_scale_and_reference():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(5, 3, 4, generator=g), dim=-1)
    y = torch.tensor([0, 1, 0, 2, 1])
    for tau, base in ((0.07, None), (0.5, 1.0), (0.2, 0.07)):
        got = supcon_loss(z, y, temperature=tau, base_temperature=base).item()
        assert got == pytest.approx(_supcon_reference(z, y, tau, base if base is not None else tau), rel=1e-5)


def test_supcon_permutation_invariant_and_single_view_finite():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(6, 2, 8, generator=g), dim=-1)
    y = torch.tensor([0, 0, 1, 2, 2, 3])  # class 3 has one example (its two views are each other's positive)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    a = supcon_loss(z, y)
    assert torch.allclose(a, supcon_loss(z[perm], y[perm]), atol=1e-6)
    one = supcon_loss(z[:, :1], y)  # class 1 and 3 anchors have no positive
    assert torch.isfinite(one) and one.item() > 0


def test_masked_logits_and_probability_of_unseen_is_zero():
    logits = torch.tensor([[5.0, 1.0, 9.0], [0.0, -1.0, 3.0]])
    seen = torch.tensor([True, True, False])
    m = masked_logits(logits, seen)
    probs = m.softmax(-1)
    assert probs[:, 2].eq(0).all() and m.argmax(-1).tolist() == [0, 0]
    assert logits[0, 2] == 9.0  # input not modified


def test_consistency_only_chosen_columns():
    """cols {0, 2}: ((1-0)^2 + (3-0)^2) / 2 = 5; over all 3 columns it would be 10/3."""
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    base = torch.tensor([[0.0, 7.0, 0.0]])
    cols = torch.tensor([True, False, True])
    assert consistency_loss(logits, base, cols).item() == pytest.approx(5.0)


def test_class_means_vectorised_equal_loop():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(7, 3, generator=g)
    lab = torch.tensor([2, 0, 2, 2, 0, 4, 4])
    means, present = class_means(emb, lab, 5)
    assert present.tolist() == [True, False, True, False, True]
    for c in (0, 2, 4):
        assert torch.allclose(means[c], emb[lab == c].mean(0), atol=1e-6)
    assert means[1].eq(0).all()


def test_ema_formula_m1_unchanged_m0_copies_half_averages():
    t = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    s = [torch.tensor([3.0, 6.0]), torch.tensor([[-1.0]])]
    t0 = [x.clone() for x in t]
    ema_update_(t, s, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(t, t0))
    ema_update_(t, s, 0.75)  # 0.75 * t + 0.25 * s
    assert torch.allclose(t[0], torch.tensor([1.5, 3.0])) and torch.allclose(t[1], torch.tensor([[2.0]]))
    assert torch.equal(s[0], torch.tensor([3.0, 6.0]))  # the student is never moved
    ema_update_(t, s, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(t, s))


def test_ema_of_equal_weights_is_bit_identical():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(1000, generator=g) * 1e3
    t = [w.clone()]
    for _ in range(50):
        ema_update_(t, [w], 0.999)
    assert torch.equal(t[0], w)
