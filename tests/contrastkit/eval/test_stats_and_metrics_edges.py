"""Stats and metric rules pinned by hand-computed values: paired CI level, bootstrap index range,
row-wise coherence."""

from __future__ import annotations

import numpy as np
import pytest

from contrastkit.eval import metrics as M
from contrastkit.eval.stats import bootstrap_ci, paired_bootstrap


def test_paired_bootstrap_interval_is_95_percent_two_sided():
    # differences with mean 0.1, sd exactly 1, n = 100 -> se = 0.1; a 95% percentile interval is about
    # +-1.96 se wide (0.392), the alpha-instead-of-alpha/2 twin +-1.645 se (0.329)
    rng = np.random.default_rng(0)
    b = rng.random(100)
    d = rng.normal(size=100)
    d = (d - d.mean()) / d.std(ddof=1) + 0.1
    r = paired_bootstrap(b + d, b, n_boot=4000, seed=0)
    assert (r["hi"] - r["lo"]) / (2 * 0.1) == pytest.approx(1.96, rel=0.06)
    # the same at alpha = 0.1: 1.645 se (the twin would give 1.28 se)
    r90 = paired_bootstrap(b + d, b, n_boot=4000, seed=0, alpha=0.1)
    assert (r90["hi"] - r90["lo"]) / (2 * 0.1) == pytest.approx(1.645, rel=0.07)


def test_bootstrap_draws_every_item_including_the_last():
    # one 1 among ten zeros, placed last: 2000 resamples of 10 draws miss it with probability 0.9^10 each,
    # so the largest bootstrap mean is > 0 and the 97.5% quantile is at least 0.1
    x = [0.0] * 9 + [1.0]
    lo, hi = bootstrap_ci(x, n_boot=2000, seed=0)
    assert lo == 0.0 and hi >= 0.1
    r = paired_bootstrap(x, [0.0] * 10, n_boot=2000, seed=0)
    assert r["diff"] == pytest.approx(0.1) and r["hi"] >= 0.1
    # and the first item too
    lo, hi = bootstrap_ci(x[::-1], n_boot=2000, seed=0)
    assert hi >= 0.1


def test_bootstrap_ci_mean_centres_on_the_sample_mean():
    # the bootstrap means of a 0/1 sample average to the sample mean (no item left out)
    x = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    lo, hi = bootstrap_ci(x, n_boot=4000, seed=2)
    assert (lo + hi) / 2 == pytest.approx(0.6, abs=0.03)


def test_cosine_coherence_normalises_each_example():
    # row cosines: (3*4 + 4*3) / (5*5) = 0.96 and 1.0 -> mean 0.98
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[4.0, 3.0], [1.0, 0.0]])
    assert M.cosine_coherence(a, b) == pytest.approx(0.98)
    assert M.cosine_coherence(b, a) == pytest.approx(0.98)
    # scaling one example's features does not change its cosine
    assert M.cosine_coherence(a * np.array([[10.0], [0.5]]), b) == pytest.approx(0.98)


def test_mc_metrics_reports_both_tie_rules_for_mc1():
    # the best true answer ties the best false one: strict MC1 says wrong, lm-eval's argmax rule says right
    m = M.mc_metrics([-1.0, -1.0, -3.0], [1, 0, 0], [-1.0, -2.0], [1, 0])
    assert m["mc1"] == 0.0 and m["mc1_lmeval"] == 1.0
    m = M.mc_metrics([-1.0, -1.0, -3.0], [1, 0, 0], [-1.0, -2.0], [1, 0], ties="argmax")
    assert m["mc1"] == 1.0 and m["mc1_lmeval"] == 1.0
    # a clear loss is a loss under both rules
    m = M.mc_metrics([-2.0, -1.0], [1, 0], [-1.0, -2.0], [1, 0])
    assert m["mc1"] == 0.0 and m["mc1_lmeval"] == 0.0


def test_logsumexp_edge_cases():
    import math

    assert M.logsumexp([]) == -math.inf
    assert M.logsumexp([-math.inf, -math.inf]) == -math.inf
    assert M.logsumexp([0.0, 0.0]) == pytest.approx(math.log(2))
    assert M.logsumexp([-1000.0, -1000.0 + math.log(3)]) == pytest.approx(-1000.0 + math.log(4))


def test_ngrams_split_on_any_whitespace():
    # "a  b\nc d" has tokens a b c d whatever the spacing: bigrams ab bc cd
    assert M.ngram_counts("  a  b\nc\td  ", 2, simctg_quirk=False) == (3, 3)
    assert M.ngram_counts("  a  b\nc\td  ", 2) == (2, 2)
