"""Pure preference-loss functions over log-probs (STYLE.md convention 9).

Every sequence-level loss has the signature::

    loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta)
        -> (losses, chosen_rewards, rejected_rewards)        # each (B,)

and is registered in :data:`contrastkit.registry.LOSSES` under its CLI name, so the trainers pick
it by ``loss: <name>``. The two method-specific terms are separate pure functions:

* :func:`treg_regularizer`: T-REG's token-level reward regularizer (arXiv 2412.02685, Sec. 3);
* :func:`loo_reverse_kl_surrogate`: HyPO's leave-one-out REINFORCE estimator of the reverse KL
  ``KL(pi_theta || pi_ref)`` on online samples (arXiv 2406.01462, Algorithm 1).

No function here touches a model: inputs are tensors, outputs are tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import UsageError
from contrastkit.registry import LOSSES, register_loss

__all__ = ["dpo_loss", "hinge_loss", "get_loss", "token_rewards_from_logps", "treg_regularizer",
           "loo_reverse_kl_surrogate"]


def _rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    return chosen_logratios, rejected_logratios


@register_loss("dpo")
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1):
    """DPO's sigmoid loss (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7).

    ``loss_i = -log sigma(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])``.
    The arithmetic is done in the same order as trl 1.16's ``loss_type="sigmoid"``, so both give
    bit-identical values.

    Args:
        policy_chosen_logps: (B,) summed log-probs of the chosen completions under the policy.
        policy_rejected_logps: (B,) same for the rejected completions.
        ref_chosen_logps: (B,) chosen log-probs under the frozen reference.
        ref_rejected_logps: (B,) rejected log-probs under the reference.
        beta: the KL strength beta (> 0).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each (B,); rewards are
        ``beta * logratio`` and detached.

    Example:
        >>> z = torch.zeros(2)
        >>> round(dpo_loss(z, z, z, z, beta=0.1)[0][0].item(), 6)  # policy == reference -> ln 2
        0.693147
    """
    chosen_logratios, rejected_logratios = _rewards(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@register_loss("hinge")
def hinge_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1):
    """SLiC-HF's hinge loss on the DPO log-ratio margin (Zhao et al. 2023, arXiv 2305.10425, Eq. 2).

    ``loss_i = max(0, 1 - beta * margin_i)`` with the margin of :func:`dpo_loss`; identical to trl's
    ``loss_type="hinge"``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each (B,).
    """
    chosen_logratios, rejected_logratios = _rewards(policy_chosen_logps, policy_rejected_logps,
                                                    ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def get_loss(name: str):
    """The registered loss called ``name`` (unknown names raise a UsageError with a did-you-mean)."""
    return LOSSES.get(name)


def token_rewards_from_logps(better_logps: torch.Tensor, worse_logps: torch.Tensor) -> torch.Tensor:
    """T-REG's self-generated token rewards by contrastive prompting (arXiv 2412.02685, Sec. 3.1).

    ``r_t = sigma(log p(y_t | x_better, y_<t) - log p(y_t | x_worse, y_<t)) - 0.5`` in (-0.5, 0.5),
    computed as ``0.5 * tanh(d / 2)`` (the same number, and exactly odd in ``d``), so swapping the
    better and worse prompts negates every reward bit for bit.

    Args:
        better_logps: (..., T) per-token log-probs of the response under the "better" prompt.
        worse_logps: (..., T) the same tokens under the "worse" prompt.

    Returns:
        (..., T) float32 rewards; 0 wherever both inputs are 0 (e.g. padding).
    """
    diff = better_logps.float() - worse_logps.float()  # (..., T)
    return 0.5 * torch.tanh(0.5 * diff)


def treg_regularizer(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, token_rewards: torch.Tensor,
                     completion_mask: torch.Tensor, *, beta: float, reduction: str = "sum"):
    """T-REG's token-level reward regularizer per pair (arXiv 2412.02685, Sec. 3.2, Eq. for L_DPO-REG).

    The implicit token reward of DPO is ``r_t = beta * (log pi(y_t) - log pi_ref(y_t))``. T-REG
    rewards agreement of ``r_t`` with the self-generated token rewards ``rhat_t``::

        L_REG(x, y) = - sum_t rhat_t * r_t                 (or the mean over t, ``reduction="mean"``)
        reg_i       = w_i * (L_REG(x, y_w) + L_REG(x, y_l)),   w_i = stopgrad(sigma(r(y_l) - r(y_w)))

    where ``r(y) = beta * sum_t (log pi - log pi_ref)`` is DPO's sequence reward, so pairs DPO
    already ranks correctly get less weight (the gradient scale of DPO itself). ``rhat`` is a
    constant; ``-rhat_t * beta * log pi_ref`` is constant in theta, so the gradient is the paper's
    reward-weighted log-likelihood ``-beta * sum_t rhat_t * grad log pi(y_t)``.

    Args:
        policy_token_logps: (2B, T) per-token log-probs, rows ``[chosen..., rejected...]``, 0 off-completion.
        ref_token_logps: (2B, T) the same under the reference (no grad needed).
        token_rewards: (2B, T) ``rhat`` aligned with the log-probs, 0 off-completion.
        completion_mask: (2B, T) 1 on scored completion tokens.
        beta: DPO's beta.
        reduction: ``"sum"`` over tokens (the paper's equation; default) or ``"mean"``.

    Returns:
        ``(reg, weights)``: (B,) per-pair regularizer and the (B,) detached weights ``w``.
    """
    mask = completion_mask.to(policy_token_logps.dtype)  # (2B, T)
    token_logratios = (policy_token_logps - ref_token_logps.detach()) * mask  # (2B, T)
    seq_rewards = beta * token_logratios.sum(dim=1)  # (2B,)
    chosen_rewards, rejected_rewards = seq_rewards.detach().chunk(2)  # (B,) each
    weights = torch.sigmoid(rejected_rewards - chosen_rewards)  # (B,), constant
    agreement = (token_rewards.detach().to(token_logratios.dtype) * beta * token_logratios).sum(dim=1)  # (2B,)
    if reduction == "mean":
        agreement = agreement / mask.sum(dim=1).clamp(min=1.0)
    elif reduction != "sum":
        raise UsageError(f"treg_token_reduction must be 'sum' or 'mean', got {reduction!r}")
    l_reg_chosen, l_reg_rejected = (-agreement).chunk(2)  # (B,) each
    return weights * (l_reg_chosen + l_reg_rejected), weights


def loo_reverse_kl_surrogate(policy_logps: torch.Tensor, ref_logps: torch.Tensor):
    """HyPO's leave-one-out REINFORCE estimator of ``KL(pi_theta || pi_ref)`` (arXiv 2406.01462, Alg. 1).

    For k samples ``y_1..y_k ~ pi_theta(.|x)`` of one prompt, ``kl_i = log pi(y_i) - log pi_ref(y_i)``
    (detached) is an unbiased single-sample estimate of the reverse KL, and::

        surrogate = mean_i (kl_i - b_i) * log pi(y_i),     b_i = mean_{j != i} kl_j

    has gradient ``mean_i (kl_i - b_i) grad log pi(y_i)``, an unbiased estimate of
    ``grad KL(pi_theta || pi_ref)`` (``b_i`` does not depend on ``y_i``, and the missing
    ``E[grad log pi] = 0``). The baseline only reduces variance; ``sum_i (kl_i - b_i) = 0``, so a
    constant shift of every ``kl_i`` leaves the surrogate unchanged.

    Args:
        policy_logps: (N, k) sequence log-probs of k samples for each of N prompts (with grad).
        ref_logps: (N, k) the same under the reference.

    Returns:
        ``(surrogate, kl_estimate)``: (N,) surrogate per prompt (its value is not the KL; only its
        gradient matters) and the (N,) detached mean KL estimate ``mean_i kl_i``.
    """
    k = policy_logps.shape[-1]
    if k < 2:
        raise UsageError(f"the leave-one-out estimator needs k >= 2 samples per prompt, got k={k}")
    kl = (policy_logps.detach() - ref_logps.detach()).float()  # (N, k)
    baseline = (kl.sum(dim=-1, keepdim=True) - kl) / (k - 1)  # (N, k) mean of the others
    advantages = (kl - baseline).to(policy_logps.dtype)  # (N, k), constant
    surrogate = (advantages * policy_logps).mean(dim=-1)  # (N,)
    return surrogate, kl.mean(dim=-1)
