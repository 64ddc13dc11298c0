import json
import math

import numpy as np
import pytest

from contrastkit.errors import UsageError
from contrastkit.eval import metrics as M


def test_mc_hand_computed():
    # MC1 answers: best true + 2 false; MC2: 2 true + 2 false (probabilities 0.4, 0.1 | 0.3, 0.2)
    lp = [math.log(x) for x in (0.4, 0.1, 0.3, 0.2)]
    m = M.mc_metrics([lp[0], lp[2], lp[3]], [1, 0, 0], lp, [1, 1, 0, 0])
    assert m["mc1"] == 1.0
    assert m["mc2"] == pytest.approx(0.5)  # (0.4 + 0.1) / 1.0
    assert m["mc3"] == pytest.approx(0.5)  # only 0.4 beats max false 0.3


def test_mc_invariants_permutation_and_shift():
    rng = np.random.default_rng(0)
    s2 = rng.normal(size=9) * 5
    l2 = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0])
    s1, l1 = s2[[0, 1, 3]], np.array([1, 0, 0])
    base = M.mc_metrics(s1, l1, s2, l2)
    p = rng.permutation(9)
    q = rng.permutation(3)
    permuted = M.mc_metrics(s1[q], l1[q], s2[p], l2[p])
    shifted = M.mc_metrics(s1 + 123.4, l1, s2 + 123.4, l2)
    for k in base:
        assert permuted[k] == pytest.approx(base[k], abs=1e-12)
        assert shifted[k] == pytest.approx(base[k], abs=1e-9)


def test_mc2_log_space_no_underflow():
    # exp(-2000) underflows to 0 in float64; the log-space form must still give 1 / (1 + e^-1)
    assert M.mc2([-2000.0], [-2001.0]) == pytest.approx(1 / (1 + math.exp(-1)))


def test_mc1_ties():
    assert M.mc1(-1.0, [-1.0, -3.0]) == 0.0
    assert M.mc1(-1.0, [-1.0, -3.0], ties="argmax") == 1.0
    with pytest.raises(UsageError):
        M.mc_metrics([0.0, 1.0], [1, 1], [0.0, 1.0], [1, 0])


def test_rep_n_known_strings():
    # "a b c a b c": bigrams ab bc ca ab bc -> 5 total, 3 unique; quirk drops the last one (bc) -> 4 total, 3 unique
    assert M.ngram_counts("a b c a b c", 2, simctg_quirk=False) == (3, 5)
    assert M.ngram_counts("a b c a b c", 2) == (3, 4)
    assert M.rep_n(["a b c a b c"], 2, simctg_quirk=False) == pytest.approx(40.0)
    assert M.rep_n(["a b c a b c"], 2) == pytest.approx(25.0)
    # counts are summed over the corpus, uniqueness is per text
    assert M.rep_n(["x y z", "x y z"], 2, simctg_quirk=False) == 0.0
    d = M.repetition_and_diversity(["a b c d e f g"], simctg_quirk=False)
    assert d["rep-2"] == d["rep-3"] == d["rep-4"] == 0.0 and d["diversity"] == 1.0
    d = M.repetition_and_diversity(["a a a a a a"], simctg_quirk=False)
    assert d["diversity"] == pytest.approx((1 - 0.8) * (1 - 0.75) * (1 - 2 / 3))


def test_diversity_reproduces_published_cs_benchmark(shared_data):
    """Su & Xu's released numbers: reference diversity 92.98, contrastive search 89.35 (per cent)."""
    data = json.loads((shared_data / "cs_wikitext_benchmark" / "wikitext_contrastive_k_5_alpha_0.6_result.json")
                      .read_text())
    refs = [d["reference_text"] for d in data]
    gens = [d["generated_result"]["0"] for d in data]
    assert round(M.repetition_and_diversity(refs, round_reps=True)["diversity"] * 100, 2) == 92.98
    assert round(M.repetition_and_diversity(gens, round_reps=True)["diversity"] * 100, 2) == 89.35
    assert round(M.repetition_and_diversity(gens)["diversity"] * 100, 2) == 89.34  # unrounded rep-n


def test_reference_similarity():
    out = M.reference_similarity("Nothing happens to you.", ["Nothing happens to you.", "I have no comment."],
                                 ["You grow watermelons in your stomach."])
    assert out["bleu_max"] == pytest.approx(100.0) and out["bleu_acc"] == 1.0
    assert out["rougeL_max"] == pytest.approx(100.0) and out["rougeL_acc"] == 1.0
    out = M.reference_similarity("You grow watermelons in your stomach.", ["Nothing happens."],
                                 ["You grow watermelons in your stomach."])
    assert out["bleu_acc"] == 0.0 and out["rouge1_diff"] < 0


def test_cosine_coherence():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert M.cosine_coherence(a, a * 3) == pytest.approx(1.0)
    assert M.cosine_coherence(a, np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(0.0)
    with pytest.raises(UsageError):
        M.cosine_coherence(a, a[:1])
