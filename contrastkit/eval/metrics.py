"""Pure evaluation metrics: TruthfulQA MC1/MC2/MC3, reference similarity, rep-n, diversity, coherence.

Nothing here touches a model. Every function takes scores, strings or feature arrays and
returns numbers, so each definition can be checked on hand-computed examples.

* TruthfulQA MC (Lin et al., arXiv:2109.07958; ``sylinrl/TruthfulQA truthfulqa/models.py::MC_calcs``):
  an answer's score is the sum of its token log-probs (or of a contrastive strategy's per-token
  scores). MC1 = 1[score(best true) > max score(false)]; MC2 = total normalised probability mass
  on the true answers, ``exp(LSE(true) - LSE(true ∪ false))`` (computed in log space, never
  exp-then-divide); MC3 = fraction of true answers scoring above every false answer.
* rep-n and diversity (Su et al., SimCTG, arXiv:2202.06417, ``simctg/evaluation.py``):
  ``rep-n = 100 (1 - unique n-grams / total n-grams)`` with counts summed over the corpus;
  ``diversity = prod_{n=2..4} (1 - rep-n / 100)``. The reference loop skips the last n-gram of
  every text (``while end_idx < len(tokens)``); ``simctg_quirk=True`` (default) replicates it
  so numbers match published tables exactly.
* BLEU / ROUGE-L "acc" and "diff" for TruthfulQA generation (``truthfulqa/metrics.py::run_bleu_and_rouge``,
  lm-eval ``truthfulqa/utils.py``): max similarity over true references vs over false ones.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from contrastkit.errors import UsageError

__all__ = [
    "mc_metrics", "mc1", "mc2", "mc3", "rep_n", "repetition_and_diversity", "ngram_counts",
    "reference_similarity", "bleu_score", "rouge_scores", "cosine_coherence", "logsumexp",
]


def logsumexp(x: Sequence[float]) -> float:
    """Stable ``log(sum(exp(x)))`` of a 1-D sequence (``-inf`` for an all ``-inf`` input)."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return -math.inf
    m = float(np.max(a))
    if m == -math.inf:
        return -math.inf
    return m + math.log(float(np.sum(np.exp(a - m))))


def _check_nonempty(name: str, values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise UsageError(f"{name} must be a non-empty list of answer scores, got {len(a)}")
    return a


def mc1(best_true: float, false_scores: Sequence[float], *, ties: str = "strict") -> float:
    """MC1: 1 if the best true answer outscores every false answer.

    Args:
        best_true: score of the single best (MC1) true answer.
        false_scores: scores of the MC1 false answers.
        ties: ``"strict"`` (original ``>``; a tie is wrong) or ``"argmax"`` (lm-eval: ``np.argmax``
            with the true answer first, so a tie counts as right).

    Example:
        >>> mc1(-1.0, [-2.0, -3.0]), mc1(-2.0, [-2.0]), mc1(-2.0, [-2.0], ties="argmax")
        (1.0, 0.0, 1.0)
    """
    f = _check_nonempty("false_scores", false_scores)
    if ties not in ("strict", "argmax"):
        raise UsageError(f"ties must be 'strict' or 'argmax', got {ties!r}")
    top = float(f.max())
    return float(best_true > top if ties == "strict" else best_true >= top)


def mc2(true_scores: Sequence[float], false_scores: Sequence[float]) -> float:
    """MC2: normalised probability of the true set, ``exp(LSE(true) - LSE(true ∪ false))``.

    Example:
        >>> round(mc2([math.log(0.3)], [math.log(0.1)]), 6)   # 0.3 / (0.3 + 0.1)
        0.75
    """
    t = _check_nonempty("true_scores", true_scores)
    f = _check_nonempty("false_scores", false_scores)
    return float(math.exp(logsumexp(t) - logsumexp(np.concatenate([t, f]))))


def mc3(true_scores: Sequence[float], false_scores: Sequence[float]) -> float:
    """MC3: fraction of true answers scoring strictly above the best false answer.

    Example:
        >>> mc3([-1.0, -2.0, -5.0], [-3.0, -4.0])
        0.6666666666666666
    """
    t = _check_nonempty("true_scores", true_scores)
    f = _check_nonempty("false_scores", false_scores)
    return float(np.mean(t > f.max()))


def mc_metrics(mc1_scores: Sequence[float], mc1_labels: Sequence[int], mc2_scores: Sequence[float],
               mc2_labels: Sequence[int], *, ties: str = "strict") -> dict[str, float]:
    """MC1/MC2/MC3 of one question from its answer scores and 0/1 labels.

    MC1 uses the ``mc1`` answer list (exactly one label 1); MC2 and MC3 use the ``mc2`` list.
    Also returns ``mc1_lmeval`` (argmax tie rule) so harness numbers can be matched.
    """
    s1, l1 = np.asarray(mc1_scores, dtype=np.float64), np.asarray(mc1_labels, dtype=bool)
    s2, l2 = np.asarray(mc2_scores, dtype=np.float64), np.asarray(mc2_labels, dtype=bool)
    if s1.shape != l1.shape or s2.shape != l2.shape:
        raise UsageError("answer scores and labels must have the same length")
    if l1.sum() != 1:
        raise UsageError(f"MC1 needs exactly one true answer, got {int(l1.sum())}")
    if not l2.any() or l2.all():
        raise UsageError("MC2 needs at least one true and one false answer")
    best = float(s1[l1][0])
    return {
        "mc1": mc1(best, s1[~l1], ties=ties),
        "mc1_lmeval": mc1(best, s1[~l1], ties="argmax"),
        "mc2": mc2(s2[l2], s2[~l2]),
        "mc3": mc3(s2[l2], s2[~l2]),
    }


# ------------------------------------------------------------------------------------------
# Repetition and diversity (SimCTG)
# ------------------------------------------------------------------------------------------


def ngram_counts(text: str, n: int, *, simctg_quirk: bool = True) -> tuple[int, int]:
    """(unique, total) whitespace n-grams of one text; the quirk drops the last n-gram.

    Example:
        >>> ngram_counts("a b a b", 2, simctg_quirk=False), ngram_counts("a b a b", 2)
        ((2, 3), (2, 2))
    """
    if n < 1:
        raise UsageError(f"n must be >= 1, got {n}")
    tokens = text.strip().split()
    last = len(tokens) - n if simctg_quirk else len(tokens) - n + 1
    grams = [tuple(tokens[i:i + n]) for i in range(max(last, 0))]
    return len(set(grams)), len(grams)


def rep_n(texts: Sequence[str], n: int, *, simctg_quirk: bool = True) -> float:
    """Corpus rep-n = 100 (1 - sum unique / sum total); 0.0 when no text has an n-gram.

    Example:
        >>> rep_n(["a a a a a"], 2, simctg_quirk=False)   # 4 bigrams, 1 unique
        75.0
    """
    unique = total = 0
    for t in texts:
        u, c = ngram_counts(t, n, simctg_quirk=simctg_quirk)
        unique, total = unique + u, total + c
    return 100.0 * (1.0 - unique / total) if total else 0.0


def repetition_and_diversity(texts: Sequence[str], *, simctg_quirk: bool = True,
                             round_reps: bool = False) -> dict[str, float]:
    """``{"rep-2", "rep-3", "rep-4", "diversity"}``; diversity is a fraction in [0, 1].

    ``round_reps=True`` rounds each rep-n to 2 decimals before the product, as Su & Xu's
    released evaluation code does (``round(pred_seq_2 * 100, 2)``); needed to match their
    published diversity to the last digit (e.g. 89.35 instead of 89.34).
    """
    out = {f"rep-{n}": rep_n(texts, n, simctg_quirk=simctg_quirk) for n in (2, 3, 4)}
    div = 1.0
    for n in (2, 3, 4):
        rep = round(out[f"rep-{n}"], 2) if round_reps else out[f"rep-{n}"]
        div *= 1.0 - rep / 100.0
    out["diversity"] = div
    return out


# ------------------------------------------------------------------------------------------
# Reference similarity (TruthfulQA generation)
# ------------------------------------------------------------------------------------------


def bleu_score(prediction: str, reference: str) -> float:
    """sacreBLEU as the TruthfulQA / lm-eval code calls it (exp smoothing, ``intl`` tokenizer)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu([prediction], [[reference]], smooth_method="exp", smooth_value=0.0,
                                       force=False, lowercase=False, tokenize="intl",
                                       use_effective_order=False).score)


_ROUGE_SCORER = None


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/Lsum F-measures x100 as lm-eval computes them (`` . `` -> ``.\\n`` sentence split)."""
    global _ROUGE_SCORER
    from rouge_score import rouge_scorer, scoring

    if _ROUGE_SCORER is None:
        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])
    aggregator = scoring.BootstrapAggregator()

    def prep(s: str) -> str:
        return s.replace(" . ", ".\n")

    aggregator.add_scores(_ROUGE_SCORER.score(prep(reference), prep(prediction)))
    result = aggregator.aggregate()
    return {"rouge1": result["rouge1"].mid.fmeasure * 100, "rouge2": result["rouge2"].mid.fmeasure * 100,
            "rougeL": result["rougeLsum"].mid.fmeasure * 100}


def reference_similarity(prediction: str, true_refs: Sequence[str], false_refs: Sequence[str]) -> dict[str, float]:
    """BLEU, ROUGE-1/2/L ``max`` (best true), ``diff`` (best true - best false), ``acc`` (1[best true > best false]).

    ``prediction`` is scored as given (lm-eval does not strip it; the caller decides).
    """
    if not true_refs or not false_refs:
        raise UsageError("reference similarity needs at least one true and one false reference")
    refs = list(true_refs) + list(false_refs)
    per_metric = {"bleu": [bleu_score(prediction, r) for r in refs]}
    rouge = [rouge_scores(prediction, r) for r in refs]
    for name in ("rouge1", "rouge2", "rougeL"):
        per_metric[name] = [r[name] for r in rouge]
    out: dict[str, float] = {}
    n_true = len(true_refs)
    for name, values in per_metric.items():
        t, f = float(np.nanmax(values[:n_true])), float(np.nanmax(values[n_true:]))
        out.update({f"{name}_max": t, f"{name}_diff": t - f, f"{name}_acc": float(t > f)})
    return out


def cosine_coherence(prefix_features: np.ndarray, continuation_features: np.ndarray) -> float:
    """Coherence v1 (SimCTG / CD): mean cosine similarity of prefix and continuation embeddings.

    Args:
        prefix_features, continuation_features: (N, d) arrays, row i = example i.
    """
    a = np.asarray(prefix_features, dtype=np.float64)
    b = np.asarray(continuation_features, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise UsageError(f"coherence needs two (N, d) arrays of equal shape, got {a.shape} and {b.shape}")
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return float(np.mean(np.sum(a * b, axis=1)))
