"""Pure preference-loss maths on hand-built tensors (tier a) and invariants (tier b)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.alignment.losses import (
    dpo_loss,
    get_loss,
    hinge_loss,
    loo_reverse_kl_surrogate,
    token_rewards_from_logps,
    treg_regularizer,
)
from contrastkit.errors import UsageError


def test_dpo_loss_hand_worked():
    """beta=0.5; margins: pair 0 (−1 − (−3)) − (−2 − (−1)) = 3 -> −log σ(1.5) = 0.201413;
    pair 1 margin 0 -> ln 2."""
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -4.0])
    rc, rr = torch.tensor([-3.0, -4.0]), torch.tensor([-1.0, -4.0])
    losses, cw, rw = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-1.5)), math.log(2)], abs=1e-6)
    assert cw.tolist() == [1.0, 0.0] and rw.tolist() == [-0.5, 0.0]
    assert not cw.requires_grad


def test_dpo_loss_matches_trl_sigmoid_bitwise():
    """Same op order as trl 1.16's sigmoid branch: delta = (pc−rc) − (pr−rr); −logsigmoid(β·delta)."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(32, generator=g) * 20 for _ in range(4))
    trl_style = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr)))
    assert torch.equal(dpo_loss(pc, pr, rc, rr, beta=0.1)[0], trl_style)


def test_hinge_loss_and_registry():
    z = torch.zeros(3)
    assert hinge_loss(z, z, z, z, beta=0.1)[0].tolist() == [1.0, 1.0, 1.0]
    assert get_loss("dpo") is dpo_loss and get_loss("hinge") is hinge_loss
    with pytest.raises(UsageError, match="Did you mean 'dpo'"):
        get_loss("dpp")


def test_token_rewards_range_sign_and_swap_negates_exactly():
    g = torch.Generator().manual_seed(1)
    better, worse = torch.randn(4, 9, generator=g) * 5, torch.randn(4, 9, generator=g) * 5
    r = token_rewards_from_logps(better, worse)
    assert r.abs().max() <= 0.5  # (-0.5, 0.5) mathematically; fp32 tanh saturates at large |d|
    ref = torch.sigmoid(better - worse) - 0.5  # the paper's form
    torch.testing.assert_close(r, ref, atol=1e-6, rtol=0)
    assert torch.equal(token_rewards_from_logps(worse, better), -r)  # swapping prompts negates bit for bit
    assert torch.equal(token_rewards_from_logps(torch.zeros(3), torch.zeros(3)), torch.zeros(3))


def _treg_inputs(seed=0, B=3, T=6):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(2 * B, T, generator=g) > 0.3).long()
    pol = (-torch.rand(2 * B, T, generator=g) * 3) * mask
    ref = (-torch.rand(2 * B, T, generator=g) * 3) * mask
    rhat = (torch.rand(2 * B, T, generator=g) - 0.5) * mask
    return pol.requires_grad_(), ref, rhat, mask


def test_treg_regularizer_against_loop_reference():
    pol, ref, rhat, mask = _treg_inputs()
    beta = 0.2
    reg, w = treg_regularizer(pol, ref, rhat, mask, beta=beta)
    B = pol.shape[0] // 2
    for i in range(B):  # obviously-correct per-pair loop
        r_c = beta * ((pol[i] - ref[i]) * mask[i]).sum()
        r_r = beta * ((pol[B + i] - ref[B + i]) * mask[B + i]).sum()
        w_i = torch.sigmoid(r_r - r_c).detach()
        l_c = -sum(rhat[i, t] * beta * (pol[i, t] - ref[i, t]) for t in range(pol.shape[1]) if mask[i, t])
        l_r = -sum(rhat[B + i, t] * beta * (pol[B + i, t] - ref[B + i, t]) for t in range(pol.shape[1]) if mask[B + i, t])
        torch.testing.assert_close(w[i], w_i)
        torch.testing.assert_close(reg[i], w_i * (l_c + l_r), atol=1e-6, rtol=1e-5)
    assert not w.requires_grad
    # gradient is the paper's reward-weighted log-likelihood: −w·β·rhat_t on each token
    reg.sum().backward()
    expected = -beta * rhat * mask * torch.cat([w, w])[:, None]
    torch.testing.assert_close(pol.grad, expected, atol=1e-7, rtol=1e-5)


def test_treg_zero_rewards_give_no_term_and_mean_reduction():
    pol, ref, rhat, mask = _treg_inputs(1)
    pc, pr = pol.detach().sum(1).chunk(2)
    rc, rr = ref.sum(1).chunk(2)
    dpo = dpo_loss(pc, pr, rc, rr, beta=0.1)[0]
    reg0, w0 = treg_regularizer(pol, ref, torch.zeros_like(rhat), mask, beta=0.1)  # no token rewards: no term
    reg0.sum().backward()
    assert torch.equal(reg0, torch.zeros_like(reg0)) and torch.equal(pol.grad, torch.zeros_like(pol))
    assert dpo.shape == w0.shape  # one weight per pair, as DPO has one loss per pair
    reg_mean, w = treg_regularizer(pol, ref, rhat, mask, beta=0.1, reduction="mean")
    per_row = -(rhat * 0.1 * (pol - ref) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (2B,) token mean
    lc, lr = per_row.chunk(2)
    torch.testing.assert_close(reg_mean, w * (lc + lr))
    with pytest.raises(UsageError, match="'sum' or 'mean'"):
        treg_regularizer(pol, ref, rhat, mask, beta=0.1, reduction="max")


def test_treg_policy_equals_reference_gives_zero_and_half_weight():
    pol, _, rhat, mask = _treg_inputs(2)
    reg, w = treg_regularizer(pol, pol.detach(), rhat, mask, beta=0.1)
    assert torch.equal(reg, torch.zeros_like(reg)) and torch.equal(w, torch.full_like(w, 0.5))


def test_loo_surrogate_identities():
    g = torch.Generator().manual_seed(3)
    pol = torch.randn(4, 5, generator=g, requires_grad=True)
    ref = torch.randn(4, 5, generator=g)
    sur, kl = loo_reverse_kl_surrogate(pol, ref)
    torch.testing.assert_close(kl, (pol - ref).detach().mean(1))
    # a constant shift of every kl in a group leaves the surrogate unchanged (sum of advantages is 0)
    sur_shift, _ = loo_reverse_kl_surrogate(pol, ref - 7.0)
    torch.testing.assert_close(sur_shift, sur, atol=1e-5, rtol=0)
    # reference gets no gradient; policy == reference -> zero surrogate and zero gradient
    sur0, kl0 = loo_reverse_kl_surrogate(pol, pol.detach())
    sur0.sum().backward()
    assert torch.equal(kl0, torch.zeros(4)) and torch.equal(pol.grad, torch.zeros_like(pol))
    with pytest.raises(UsageError, match="k >= 2"):
        loo_reverse_kl_surrogate(pol[:, :1], ref[:, :1])


def test_loo_estimator_unbiased_on_categorical_toy():
    """pi = softmax(theta) over 4 outcomes, pi_ref fixed: E[kl_i] = KL(pi||pi_ref) and the mean surrogate
    gradient = ∇ KL in closed form (Monte Carlo, 200k prompts × k=3)."""
    theta = torch.tensor([0.5, -0.3, 1.2, 0.0], requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([0.0, 0.4, -0.2, 0.3]), 0)
    logp = torch.log_softmax(theta, 0)
    kl_true = (logp.exp() * (logp - ref_logp)).sum()
    (grad_true,) = torch.autograd.grad(kl_true, theta, retain_graph=True)
    g = torch.Generator().manual_seed(0)
    n, k = 200_000, 3
    samples = torch.multinomial(logp.detach().exp(), n * k, replacement=True, generator=g).view(n, k)
    sur, kl = loo_reverse_kl_surrogate(logp[samples], ref_logp[samples])
    (grad_est,) = torch.autograd.grad(sur.mean(), theta)
    assert kl.mean().item() == pytest.approx(kl_true.item(), abs=3e-3)
    torch.testing.assert_close(grad_est, grad_true, atol=4e-3, rtol=0)
    # against another estimator: plain REINFORCE without a baseline (mean_i kl_i * grad log pi_i) is also
    # unbiased, but a constant offset of the per-sample KL (here 10 nats: a reference 10 nats less likely
    # everywhere) inflates its spread, while the LOO estimate does not move. Over 20 independent chunks:
    chunks = samples.view(20, -1, k)
    loo, plain = [], []
    for c in chunks:
        lp, rp = torch.log_softmax(theta, 0)[c], ref_logp[c] - 10.0
        loo.append(torch.autograd.grad(loo_reverse_kl_surrogate(lp, rp)[0].mean(), theta, retain_graph=True)[0])
        plain.append(torch.autograd.grad(((lp - rp).detach() * lp).mean(), theta)[0])
    loo, plain = torch.stack(loo), torch.stack(plain)  # (20, 4) each
    torch.testing.assert_close(plain.mean(0), grad_true, atol=2e-2, rtol=0)  # the other estimator is unbiased too
    torch.testing.assert_close(loo.mean(0), grad_true, atol=4e-3, rtol=0)
    assert (loo.std(0) < 0.5 * plain.std(0)).all()


def _four_pairs():
    """Log-ratios chosen (2, 0, 0.5, -1) and rejected (-1, 0, -0.5, 1): margins 3, 0, 1, -2 (one pair each of: big
    win, tie, small win, loss). Every input requires grad, as in training."""
    pc = torch.tensor([-1.0, -4.0, -2.0, -5.0], requires_grad=True)
    rc = torch.tensor([-3.0, -4.0, -2.5, -4.0], requires_grad=True)
    pr = torch.tensor([-2.0, -4.0, -3.0, -1.0], requires_grad=True)
    rr = torch.tensor([-1.0, -4.0, -2.5, -2.0], requires_grad=True)
    return pc, pr, rc, rr


@pytest.mark.parametrize("fn", [dpo_loss, hinge_loss])
def test_rewards_are_beta_times_own_logratio_and_detached_under_grad(fn):
    """Rewards are beta * (policy - reference) of the *same* completion, chosen first, detached even when every
    input carries a graph (the trainers log them; a graph there leaks memory and gradients)."""
    pc, pr, rc, rr = _four_pairs()
    losses, cw, rw = fn(pc, pr, rc, rr, beta=0.5)
    assert cw.tolist() == [1.0, 0.0, 0.25, -0.5] and rw.tolist() == [-0.5, 0.0, -0.25, 0.5]
    assert losses.requires_grad and not cw.requires_grad and not rw.requires_grad
    assert cw.grad_fn is None and rw.grad_fn is None


def test_hinge_loss_hand_worked_values_and_gradient():
    """SLiC hinge max(0, 1 - beta*margin), beta=0.5, margins 3, 0, 1, -2 -> 0, 1, 0.5, 2; the gradient wrt the
    chosen policy log-prob is -beta where the hinge is active (beta*margin < 1) and 0 where it is not."""
    pc, pr, rc, rr = _four_pairs()
    losses, _, _ = hinge_loss(pc, pr, rc, rr, beta=0.5)
    assert losses.tolist() == pytest.approx([0.0, 1.0, 0.5, 2.0], abs=1e-6)
    losses.sum().backward()
    assert pc.grad.tolist() == pytest.approx([0.0, -0.5, -0.5, -0.5])
    assert pr.grad.tolist() == pytest.approx([0.0, 0.5, 0.5, 0.5])
    assert rc.grad.tolist() == pytest.approx([0.0, 0.5, 0.5, 0.5])
    # another beta scales the margin, not the constant 1
    assert hinge_loss(pc, pr, rc, rr, beta=0.25)[0].tolist() == pytest.approx([0.25, 1.0, 0.75, 1.5], abs=1e-6)


def test_dpo_loss_hand_worked_four_pairs_and_gradient():
    """-log sigma(beta*margin) on margins 3, 0, 1, -2 (beta 0.5); d/d policy_chosen = -beta * sigma(-beta*margin)."""
    pc, pr, rc, rr = _four_pairs()
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = [3.0, 0.0, 1.0, -2.0]
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.5 * m)) for m in margins], abs=1e-6)
    losses.sum().backward()
    sig = [1 / (1 + math.exp(0.5 * m)) for m in margins]  # sigma(-beta * m)
    assert pc.grad.tolist() == pytest.approx([-0.5 * s for s in sig], abs=1e-6)
    assert pr.grad.tolist() == pytest.approx([0.5 * s for s in sig], abs=1e-6)
    assert rr.grad.tolist() == pytest.approx([-0.5 * s for s in sig], abs=1e-6)


def test_loss_default_beta_is_0_1():
    pc, pr, rc, rr = _four_pairs()
    for fn in (dpo_loss, hinge_loss):
        torch.testing.assert_close(fn(pc, pr, rc, rr)[0], fn(pc, pr, rc, rr, beta=0.1)[0], atol=0, rtol=0)
        torch.testing.assert_close(fn(pc, pr, rc, rr)[1], torch.tensor([0.2, 0.0, 0.05, -0.1]))


def test_token_rewards_are_float32_for_low_precision_inputs():
    better = torch.tensor([[-0.5, -3.0, -1.0]], dtype=torch.bfloat16)
    worse = torch.tensor([[-1.5, -1.0, -1.0]], dtype=torch.bfloat16)
    r = token_rewards_from_logps(better, worse)
    assert r.dtype == torch.float32
    torch.testing.assert_close(r, torch.sigmoid(torch.tensor([[1.0, -2.0, 0.0]])) - 0.5, atol=1e-6, rtol=0)


def test_treg_mean_reduction_of_a_row_without_completion_tokens_is_zero_not_nan():
    """A completion cut away entirely by truncation has an all-zero mask row: its mean is 0 (no 0/0)."""
    pol, ref, rhat, mask = _treg_inputs(4, B=2, T=5)
    mask[1] = 0
    pol, ref, rhat = pol.detach() * mask, ref * mask, rhat * mask
    reg, _ = treg_regularizer(pol, ref, rhat, mask, beta=0.1, reduction="mean")
    assert torch.isfinite(reg).all()
    per_row = -(rhat * 0.1 * (pol - ref)).sum(1) / mask.sum(1).clamp(min=1)
    assert per_row[1] == 0


def test_loo_with_two_samples_by_hand():
    """k = 2: each sample's baseline is the other one's kl, so the advantages are +-(kl_1 - kl_2)."""
    pol = torch.tensor([[-1.0, -4.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0]])  # kl = (1, -2)
    sur, kl = loo_reverse_kl_surrogate(pol, ref)
    assert kl.tolist() == [-0.5]
    assert sur.tolist() == pytest.approx([(3.0 * -1.0 + -3.0 * -4.0) / 2])
    sur.sum().backward()
    assert pol.grad.tolist() == [[1.5, -1.5]]
