"""Uncertainty for per-item scores: standard errors, bootstrap CIs and paired tests.

Every metric the harness reports is a mean over items (questions, prompts, test examples), so
its uncertainty comes from the per-item values:

* :func:`mean_stderr`: the mean and its standard error ``s / sqrt(n)`` with the sample standard
  deviation (``ddof=1``), exactly as lm-eval's ``mean_stderr`` / ``sample_stddev`` report it.
* :func:`bootstrap_ci`: a percentile bootstrap confidence interval of the mean (Efron & Tibshirani
  1993, ch. 13), resampling items with replacement.
* :func:`paired_bootstrap`: two systems scored on the same items. Resamples the per-item
  differences; the interval is the percentile interval of the mean difference, the p-value is
  two-sided under the null of zero mean difference, by the shift method (the bootstrap means of
  the centred differences as the null distribution; Efron & Tibshirani 1993, §16.4), with the
  ``(count + 1) / (n_boot + 1)`` correction so it is never 0.
* :func:`sign_test`: the exact two-sided binomial sign test on the items where the two differ
  (ties dropped, as is standard).

All resampling is vectorised (one ``(n_boot, n)`` index draw) and seeded through an explicit
``numpy.random.Generator``, so a report is reproducible.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_stderr", "bootstrap_ci", "paired_bootstrap", "sign_test", "summarize"]


def _as_1d(values, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one per-item value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    return arr


def _check_boot(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def mean_stderr(values) -> tuple[float, float]:
    """``(mean, stderr)`` with ``stderr = std(ddof=1) / sqrt(n)`` (lm-eval's rule); NaN for n < 2."""
    arr = _as_1d(values)
    n = arr.size
    stderr = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(arr.mean()), stderr


def _boot_means(arr: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(int(n_boot), arr.size))  # (n_boot, n) resampled item indices
    return arr[idx].mean(axis=1)  # (n_boot,)


def bootstrap_ci(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of the mean at level ``1 - alpha`` (default 95%)."""
    _check_boot(n_boot, alpha)
    means = _boot_means(_as_1d(values), n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap(a, b, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Paired comparison of ``a`` and ``b`` (same items, same order).

    Returns ``{"diff", "lo", "hi", "p_value", "n"}``: the mean of ``a - b``, its percentile
    bootstrap interval, and the two-sided p-value for a zero mean difference.
    """
    _check_boot(n_boot, alpha)
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired values need the same items: got {a.size} and {b.size}")
    d = a - b  # (n,)
    observed = float(d.mean())
    means = _boot_means(d, n_boot, seed)  # (n_boot,)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    null = means - observed  # bootstrap distribution shifted to the null (mean 0)
    extreme = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    p = (extreme + 1) / (int(n_boot) + 1)
    return {"diff": observed, "lo": float(lo), "hi": float(hi), "p_value": float(min(1.0, p)), "n": int(d.size)}


def sign_test(a, b) -> dict:
    """Exact two-sided sign test: ``{"wins", "losses", "ties", "p_value"}`` (wins: ``a > b``)."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired values need the same items: got {a.size} and {b.size}")
    wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
    n = wins + losses
    if n == 0:
        p = 1.0
    else:
        k = min(wins, losses)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n  # P(X <= k), X ~ Bin(n, 1/2)
        p = min(1.0, 2.0 * tail)
    return {"wins": wins, "losses": losses, "ties": int(a.size - n), "p_value": float(p)}


def summarize(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """``{"mean", "stderr", "ci_lo", "ci_hi", "n"}`` for one metric's per-item values."""
    mean, stderr = mean_stderr(values)
    lo, hi = bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
    return {"mean": mean, "stderr": stderr, "ci_lo": lo, "ci_hi": hi, "n": int(np.asarray(values).size)}
