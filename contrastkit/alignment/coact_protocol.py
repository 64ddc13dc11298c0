"""Few-shot class-incremental sessions: seeded class order, N-way K-shot splits, per-session metrics.

The standard FSCIL protocol (research notes 4.1, "Session protocol"; arXiv 2405.16625 v2, experiments, FSCIL setup):
session 0 trains on ``base_classes`` classes (all their examples, or ``base_shots`` each), then
``sessions`` incremental sessions each add ``ways`` classes with ``shots`` examples each. After
every session the model is tested on the test examples of all classes seen so far.

Class ids are assigned in session order: ids ``[0, base_classes)`` are the base classes, session s
adds ids ``[base + (s-1)*ways, base + s*ways)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contrastkit.alignment.coact_config import ProtocolConfig
from contrastkit.errors import UsageError, did_you_mean

__all__ = ["Sessions", "make_sessions", "session_metrics", "run_summary"]


@dataclass
class Sessions:
    """One seed's split. ``classes``: names in id order; per session: train indices (into the raw
    training rows) and the cumulative test indices (into the raw test rows) with their class ids."""

    classes: list[str]
    train_idx: list[torch.Tensor]
    train_labels: list[torch.Tensor]
    test_idx: torch.Tensor
    test_labels: torch.Tensor
    base_classes: int
    ways: int

    def seen_classes(self, session: int) -> int:
        return self.base_classes + session * self.ways


def _check_data(train_labels: list[str], test_labels: list[str], p: ProtocolConfig) -> dict[str, list[int]]:
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(train_labels):
        by_class.setdefault(y, []).append(i)
    if p.total_classes > len(by_class):
        raise UsageError(f"too many classes requested: base_classes + ways * sessions = {p.base_classes} + "
                         f"{p.ways} * {p.sessions} = {p.total_classes}, but the training data has {len(by_class)}")
    unseen = sorted({y for y in test_labels if y not in by_class})
    if unseen:
        raise UsageError(f"test label '{unseen[0]}' never occurs in the training data "
                         f"({len(unseen)} such labels).{did_you_mean(unseen[0], by_class)}")
    need = max(p.shots, p.base_shots or 1)
    small = sorted((len(v), k) for k, v in by_class.items() if len(v) < need)
    if small:
        n, name = small[0]
        raise UsageError(f"class '{name}' has {n} training examples, fewer than the {need} shots every class "
                         f"needs ({len(small)} such classes)")
    return by_class


def make_sessions(train_labels: list[str], test_labels: list[str], p: ProtocolConfig, seed: int) -> Sessions:
    """Split the data for one seed: class order and the shots drawn are fixed by ``seed``."""
    by_class = _check_data(train_labels, test_labels, p)
    g = torch.Generator().manual_seed(seed)
    names = sorted(by_class)
    order = [names[i] for i in torch.randperm(len(names), generator=g)[: p.total_classes].tolist()]
    test_by_class: dict[str, list[int]] = {}
    for i, y in enumerate(test_labels):
        test_by_class.setdefault(y, []).append(i)
    train_idx, train_lab, test_idx, test_lab = [], [], [], []
    bounds = [(0, p.base_classes)] + [(p.base_classes + s * p.ways, p.base_classes + (s + 1) * p.ways)
                                      for s in range(p.sessions)]
    for s, (lo, hi) in enumerate(bounds):
        shots = p.base_shots if s == 0 else p.shots
        idx, lab = [], []
        for cid in range(lo, hi):
            rows = torch.tensor(by_class[order[cid]])
            pick = rows[torch.randperm(len(rows), generator=g)[:shots]] if shots else rows
            idx.append(pick)
            lab.append(torch.full((len(pick),), cid, dtype=torch.long))
            t_rows = torch.tensor(test_by_class.get(order[cid], []), dtype=torch.long)
            if p.test_per_class and len(t_rows) > p.test_per_class:
                t_rows = t_rows[torch.randperm(len(t_rows), generator=g)[: p.test_per_class]]
            test_idx.append(t_rows)
            test_lab.append(torch.full((len(t_rows),), cid, dtype=torch.long))
        train_idx.append(torch.cat(idx))
        train_lab.append(torch.cat(lab))
    return Sessions(order, train_idx, train_lab, torch.cat(test_idx), torch.cat(test_lab), p.base_classes, p.ways)


def session_metrics(preds: torch.Tensor, labels: torch.Tensor, base_classes: int) -> dict:
    """Accuracy on all seen classes, on base classes and on incremental classes (None when absent).

    Args:
        preds, labels: (N,) predicted and true class ids of the test examples of the seen classes.
    """
    correct = (preds == labels).float()
    base = labels < base_classes
    return {
        "acc": correct.mean().item() if len(labels) else float("nan"),
        "acc_base": correct[base].mean().item() if base.any() else None,
        "acc_new": correct[~base].mean().item() if (~base).any() else None,
        "n_test": int(len(labels)),
    }


def run_summary(per_session: list[dict]) -> dict:
    """Average over sessions, final accuracy, and forgetting.

    ``drop`` = acc(session 0) - acc(last), the FSCIL "performance drop"; ``base_forgetting`` =
    acc_base(session 0) - acc_base(last).
    """
    accs = [r["acc"] for r in per_session]
    return {
        "avg_acc": sum(accs) / len(accs),
        "final_acc": accs[-1],
        "final_acc_base": per_session[-1]["acc_base"],
        "final_acc_new": per_session[-1]["acc_new"],
        "drop": accs[0] - accs[-1],
        "base_forgetting": per_session[0]["acc_base"] - per_session[-1]["acc_base"],
    }
