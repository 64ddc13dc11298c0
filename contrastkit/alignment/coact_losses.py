"""CoACT's pure tensor functions: SupCon, consistency, masked logits, prototypes, EMA.

CoACT: Roy, Dolatabadi, Afkanpour, Etemad, "Consistency-Guided Asynchronous Contrastive Tuning for
Few-Shot Class-Incremental Tuning of Foundation Models" (arXiv 2405.16625 v2, TMLR 2025).
Section 3 of the paper describes the three parts; ../shared/research/alignment.md section 4 has
what the authors' code computes. Nothing here touches a model: the trainer feeds these tensors.
"""

from __future__ import annotations

import torch

__all__ = ["supcon_loss", "masked_logits", "consistency_loss", "class_means", "ema_update_"]


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, *, temperature: float = 0.07,
                base_temperature: float | None = None) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., arXiv 2004.11362, eq. 2 "L_out"), ``contrast_mode='all'``.

    CoACT uses it between the student's and the teacher's views (arXiv 2405.16625 v2, part (i), asynchronous contrastive tuning).
    Every view of every example is an anchor; its positives are all *other* views with the same
    label; the loss of an anchor is ``-mean_{p in P(a)} log softmax_{k != a}(z_a . z_k / tau)[p]``,
    scaled by ``tau / base_tau`` and averaged over all anchors. An anchor without positives (a
    label with one view in total) contributes 0 (the reference code's zero-positive guard).

    Args:
        features: (B, V, D) L2-normalised embeddings, V views per example (student, teacher, ...).
        labels: (B,) integer class ids.
        temperature: tau (paper/code default 0.07).
        base_temperature: base tau; ``None`` = tau (scale factor 1, as in CoACT's code).

    Returns:
        Scalar loss.

    Example (hand-computed in tests/contrastkit/alignment/test_coact_losses.py): two examples of the
    same class with one view each and z1 . z2 = s give ``-log(1) = 0`` for each anchor because the
    positive is the only other sample.
    """
    B, V, D = features.shape  # batch, views, dimension
    base_temperature = temperature if base_temperature is None else base_temperature
    z = features.transpose(0, 1).reshape(V * B, D)  # (VB, D): view-major like torch.cat(unbind(dim=1))
    y = labels.repeat(V)  # (VB,)
    sim = (z @ z.T).float() / temperature  # (VB, VB)
    self_mask = torch.eye(V * B, dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask  # (VB, VB) True = positive pair
    n_pos = pos.sum(1)
    mean_log_prob_pos = (log_prob * pos).sum(1) / n_pos.clamp(min=1)  # zero-positive anchors give 0
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def masked_logits(logits: torch.Tensor, seen_mask: torch.Tensor) -> torch.Tensor:
    """Logits with every unseen class set to -inf, so it never gets probability or an argmax.

    This is a deliberate deviation from the authors' code (research notes 4.3), which leaves rows of
    classes not yet seen at random init and lets them compete at prediction time.

    Args:
        logits: (B, C) class scores.
        seen_mask: (C,) bool, True = the class has been seen (has a prototype row).
    """
    return logits.masked_fill(~seen_mask.to(logits.device)[None, :], float("-inf"))


def consistency_loss(logits: torch.Tensor, base_logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Consistency term of CoACT's incremental sessions (arXiv 2405.16625 v2, part (iii)): MSE on logits.

    Only the columns of classes the session-0 model knows enter the mean; the authors' code takes
    the MSE over every column, including random, never-trained rows (research notes 4.3).

    Args:
        logits: (B, C) current model's logits (unmasked).
        base_logits: (B, C) the frozen session-0 model's logits on the same inputs.
        columns: (C,) bool, True = column enters the loss.
    """
    cols = columns.to(logits.device)
    diff = logits[:, cols].float() - base_logits[:, cols].float()  # (B, C_seen)
    return diff.pow(2).mean()


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding per class (prototypes), vectorised with ``index_add_``.

    Args:
        embeddings: (N, D) un-normalised embeddings.
        labels: (N,) class ids in ``[0, num_classes)``.

    Returns:
        ``(means, present)``: (C, D) means (zero rows for absent classes) and (C,) bool present.
    """
    N, D = embeddings.shape
    sums = torch.zeros(num_classes, D, dtype=torch.float64, device=embeddings.device)
    sums.index_add_(0, labels, embeddings.double())
    counts = torch.bincount(labels, minlength=num_classes)  # (C,)
    means = sums / counts.clamp(min=1)[:, None].double()
    return means.to(embeddings.dtype), counts > 0


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """EMA in place: ``teacher <- m * teacher + (1 - m) * student`` (MoCo; CoACT part (i), code m = 0.999).

    Computed as ``lerp(teacher, student, 1 - m)``, which is exact when both are equal, so a
    teacher whose student's base weights are frozen stays bit-identical to the pre-trained model.
    """
    if not teacher:
        return
    torch._foreach_lerp_(teacher, student, 1.0 - momentum)
