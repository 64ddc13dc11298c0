"""Uncertainty helpers: hand-worked values that separate each rule from its likely wrong twin.

mean_stderr([1, 0, 1, 1]): mean 0.75; deviations 0.25, -0.75, 0.25, 0.25; sum of squares 0.75;
ddof=1 variance 0.25 -> std 0.5 -> stderr 0.5 / 2 = 0.25 (ddof=0 would give 0.2165).

sign_test: a beats b on 3 items, loses on 1, ties on 1. Ties dropped: n = 4,
P(X <= 1) = (1 + 4) / 16, two-sided p = 0.625 (keeping the tie as a loss gives n = 5, p = 0.375).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from contrastkit.eval.stats import bootstrap_ci, mean_stderr, paired_bootstrap, sign_test, summarize


def test_mean_stderr_uses_sample_std():
    mean, se = mean_stderr([1, 0, 1, 1])
    assert mean == pytest.approx(0.75)
    assert se == pytest.approx(0.25)


def test_mean_stderr_single_item_is_nan():
    mean, se = mean_stderr([3.0])
    assert mean == 3.0 and math.isnan(se)


def test_sign_test_drops_ties_and_is_two_sided():
    r = sign_test([1, 1, 1, 0, 0.5], [0, 0, 0, 1, 0.5])
    assert (r["wins"], r["losses"], r["ties"]) == (3, 1, 1)
    assert r["p_value"] == pytest.approx(0.625)
    # all five wins: 2 * (1/32)
    assert sign_test([1] * 5, [0] * 5)["p_value"] == pytest.approx(0.0625)
    # direction: wins are a > b
    assert sign_test([0] * 5, [1] * 5)["losses"] == 5
    assert sign_test([1, 2], [1, 2])["p_value"] == 1.0


def test_sign_test_matches_exact_binomial_reference():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    r = sign_test(a, b)
    n, k = r["wins"] + r["losses"], min(r["wins"], r["losses"])
    # slow reference: sum the binomial pmf over outcomes at least as extreme, both tails
    pmf = [math.comb(n, i) * 0.5 ** n for i in range(n + 1)]
    ref = sum(p for i, p in enumerate(pmf) if min(i, n - i) <= k)
    assert r["p_value"] == pytest.approx(min(1.0, ref))


def test_bootstrap_ci_width_matches_normal_theory_at_95():
    # 400 draws of N(0, 1): the 95% CI of the mean is about mean +- 1.96 * se (width ~ 0.196);
    # a twin that uses alpha instead of alpha / 2 gives 1.645 * se (width ~ 0.165)
    x = np.random.default_rng(0).normal(size=400)
    lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
    _, se = mean_stderr(x)
    assert lo < x.mean() < hi
    assert (hi - lo) / (2 * se) == pytest.approx(1.96, rel=0.06)


def test_bootstrap_ci_constant_and_seeded():
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    x = np.random.default_rng(1).random(30)
    assert bootstrap_ci(x, seed=4) == bootstrap_ci(x, seed=4)
    assert bootstrap_ci(x, seed=4) != bootstrap_ci(x, seed=5)


def test_paired_bootstrap_direction_and_p_value():
    rng = np.random.default_rng(0)
    b = rng.random(100)
    d = rng.normal(size=100)
    d = (d - d.mean()) / d.std(ddof=1) + 0.1  # mean diff 0.1, sd 1, n 100 -> t = 1, two-sided p ~ 0.32
    r = paired_bootstrap(b + d, b, n_boot=4000, seed=0)
    assert r["diff"] == pytest.approx(0.1)
    assert r["lo"] < 0.1 < r["hi"]
    assert 0.25 < r["p_value"] < 0.40  # one-sided twin would give ~0.16
    assert paired_bootstrap(b, b + d, n_boot=4000, seed=0)["diff"] == pytest.approx(-0.1)


def test_paired_bootstrap_identical_and_constant_shift():
    x = np.arange(10.0)
    same = paired_bootstrap(x, x, n_boot=200)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    shifted = paired_bootstrap(x + 1, x, n_boot=200)
    assert (shifted["lo"], shifted["hi"]) == (1.0, 1.0)
    assert shifted["p_value"] == pytest.approx(1 / 201)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        mean_stderr([])
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1, 2], alpha=1.5)


def test_summarize_fields():
    s = summarize([1, 0, 1, 1], n_boot=500)
    assert s["mean"] == pytest.approx(0.75) and s["stderr"] == pytest.approx(0.25) and s["n"] == 4
    assert 0.0 <= s["ci_lo"] <= 0.75 <= s["ci_hi"] <= 1.0
