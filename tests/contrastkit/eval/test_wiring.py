"""Wiring tests with hand-computed values that separate each rule from its likely wrong twins.

Values are worked out by hand in the comments (ties included), so ``>`` vs ``>=``, the MC1 vs
MC2 answer list, a dropped leading space or a missing "I have no comment." each change a number.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import contrastkit.eval.truthfulqa_tasks as tt
from contrastkit.eval import metrics as M
from contrastkit.eval.packing import build_segment, row_batch
from contrastkit.eval.truthfulqa import TruthfulQAItem

# One question whose MC1 list (A best; X, Y false) differs from its MC2 list (A, B, C true; X, Y, Z false).
ITEM = TruthfulQAItem(7, "Q?", ["A.", "X.", "Y."], [1, 0, 0], ["A.", "B.", "C.", "X.", "Y.", "Z."],
                      [1, 1, 1, 0, 0, 0], ["A.", "B.", "C."], ["X.", "Y.", "Z."])
SCORES = {"A.": -1.0, "B.": -0.5, "C.": -3.0, "X.": -2.0, "Y.": -4.0, "Z.": -0.5}
# MC1 on the MC1 list: A=-1 > max(X=-2, Y=-4) -> 1.
# MC3 on the MC2 list: max false = Z = -0.5; A=-1 no, B=-0.5 ties (strict: no), C=-3 no -> 0/3.
#   (>= would give 1/3; "<" would give 2/3; the MC1 list would give A=-1 > -2 -> 1.)
# MC2 on the MC2 list: (e^-1 + e^-0.5 + e^-3) / (that + e^-2 + e^-4 + e^-0.5) = 1.0241966 / 1.7843789 = 0.573980
#   (the MC1 list would give e^-1 / (e^-1 + e^-2 + e^-4) = 0.708756).
MC2_HAND = 0.573980


def test_mc_metrics_hand_computed_with_ties():
    m = tt.mc_record(ITEM, SCORES)
    assert m["mc1"] == 1.0 and m["mc1_lmeval"] == 1.0
    assert m["mc3"] == 0.0
    assert m["mc2"] == pytest.approx(MC2_HAND, abs=1e-6)
    assert M.mc3([-1.0, -2.0, -2.0, -3.0], [-2.0, -4.0]) == pytest.approx(0.25)  # -2 ties: only -1 counts
    assert M.mc3([-2.0], [-2.0]) == 0.0 and M.mc3([-1.9], [-2.0]) == 1.0
    assert M.mc1(-2.0, [-2.0, -5.0]) == 0.0 and M.mc1(-2.0, [-2.0], ties="argmax") == 1.0


def test_mc_record_pins_which_answer_list_feeds_which_metric():
    rec = tt.mc_record(ITEM, SCORES)
    assert rec["mc1_answers"] == ["A.", "X.", "Y."] and rec["mc1_scores"] == [-1.0, -2.0, -4.0]
    assert rec["mc2_answers"] == ITEM.mc2_choices and rec["mc2_scores"] == [-1.0, -0.5, -3.0, -2.0, -4.0, -0.5]
    assert rec["mc1_labels"] == [1, 0, 0] and rec["mc2_labels"] == [1, 1, 1, 0, 0, 0]
    assert rec["question"] == "Q?"


def test_mc_task_wiring_continuations_and_lists(monkeypatch):
    """run_items sends " " + answer after the preset context and builds records from the right lists."""
    seen = {}

    def fake_score_answers(model, tok, contexts, conts, name, **kw):
        seen["contexts"], seen["conts"] = contexts, conts
        return [[SCORES[c[1:]] if c.startswith(" ") else float("nan") for c in row] for row in conts]

    monkeypatch.setattr(tt, "score_answers", fake_score_answers)
    task = tt.TruthfulQAMC.__new__(tt.TruthfulQAMC)
    task.model, task.tok, task._cached = None, None, None
    task.cfg = tt.TruthfulQAConfig(data="x", preset="zero-shot")
    [rec] = task.run_items(SimpleNamespace(name="greedy", params={}), [{"id": 7, "item": ITEM}])
    assert seen["contexts"] == ["Q: Q?\nA:"]
    assert seen["conts"] == [[" A.", " X.", " Y.", " B.", " C.", " Z."]]  # leading space, each answer once
    assert rec["mc1"] == 1.0 and rec["mc3"] == 0.0 and rec["mc2"] == pytest.approx(MC2_HAND, abs=1e-6)
    task.cfg = tt.TruthfulQAConfig(data="x", preset="zero-shot", chat=False)
    summary = task.summarize(None, [rec, {**rec, "mc1": 0.0, "mc2": 0.2, "mc3": 1.0, "mc1_lmeval": 0.0}])
    assert summary == pytest.approx({"mc1": 0.5, "mc2": (MC2_HAND + 0.2) / 2, "mc3": 0.5, "mc1_lmeval": 0.5})


def test_similarity_acc_is_strict_on_ties():
    sentence = "the cat sat on the mat all day long"
    out = M.reference_similarity(sentence, [sentence + "."], [sentence + "."])  # identical true and false refs
    for name in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert out[f"{name}_acc"] == 0.0 and out[f"{name}_diff"] == 0.0
    assert out["bleu_max"] > 50 and out["rouge1_max"] > 50  # a real tie of high scores, not two zeros
    out = M.reference_similarity(sentence, [sentence + "."], ["a dog ran in the park yesterday."])
    assert out["bleu_acc"] == 1.0 and out["rouge1_acc"] == 1.0 and out["rougeL_acc"] == 1.0


def test_gen_references_add_no_comment_once():
    q = TruthfulQAItem(0, "Q?", ["A."], [1], ["A.", "X."], [1, 0], ["A.", "B."], ["X."])
    assert tt.gen_references(q) == (["A.", "B.", "I have no comment."], ["X."])
    q2 = TruthfulQAItem(0, "Q?", ["A."], [1], ["A.", "X."], [1, 0], ["I have no comment.", "A."], ["X."])
    assert tt.gen_references(q2) == (["I have no comment.", "A."], ["X."])


@pytest.mark.parametrize("gen_preset,raw,answer", [("lmeval", " I have no comment.\n\nQ: next", " I have no comment."),
                                                   ("contrastkit", " I have no comment.\nQ: next", "I have no comment.")])
def test_gen_task_wiring(monkeypatch, gen_preset, raw, answer):
    """A "no comment" answer is right (acc 1) only because "I have no comment." joins the true references."""
    import contrastkit.generation as gen

    monkeypatch.setattr(gen, "generate", lambda model, tok, prompts, name, **kw: [
        SimpleNamespace(text=raw, new_tokens=5) for _ in prompts])
    task = tt.TruthfulQAGen.__new__(tt.TruthfulQAGen)
    task.model, task._judges = None, {}
    task.tok = SimpleNamespace(apply_chat_template=None)
    task.cfg = tt.TruthfulQAConfig(data="x", gen_preset=gen_preset)
    monkeypatch.setattr(tt, "StopStringCriteria", None, raising=False)
    import transformers

    monkeypatch.setattr(transformers, "StopStringCriteria", lambda tok, stops: ("stop", tuple(stops)))
    q = TruthfulQAItem(0, "Is it?", ["Yes it is."], [1], ["Yes it is.", "No."], [1, 0], ["Yes it is."],
                       ["No it is never."])
    [rec] = task.run_items(SimpleNamespace(name="greedy", params={}), [{"id": 0, "item": q}])
    assert rec["answer"] == answer and rec["true_refs"] == ["Yes it is.", "I have no comment."]
    assert rec["bleu_acc"] == 1.0 and rec["rouge1_acc"] == 1.0 and rec["bleu_max"] == pytest.approx(100.0)


def test_packed_mask_never_lets_an_answer_see_its_siblings():
    # context [5, 6] (n_prefix 1 -> segment starts at 6); answers [7, 8, 9] and [7, 3, 4]: trie 6 -> 7 -> {8, 3}
    seg = build_segment([5, 6], [[7, 8, 9], [7, 3, 4]], n_prefix=1)
    assert seg.tokens == [6, 7, 8, 3] and seg.parent == [-1, 0, 1, 1]
    batch = row_batch([seg, seg], [[0, 1]], pad_id=0)  # two copies side by side in one row
    want_one = np.array([[1, 0, 0, 0],
                         [1, 1, 0, 0],
                         [1, 1, 1, 0],   # 8 sees 6, 7, itself; not its sibling 3
                         [1, 1, 0, 1]],  # 3 sees 6, 7, itself; not its sibling 8
                        dtype=bool)
    want = np.zeros((8, 8), dtype=bool)
    want[:4, :4] = want_one
    want[4:, 4:] = want_one
    np.testing.assert_array_equal(batch.allowed[0].numpy(), want)
    mask = batch.additive_mask(n_prefix=1, dtype=__import__("torch").float32)[0, 0]
    assert (mask[:, 0] == 0).all()  # the primer is visible to every token
    assert (mask[:, 1:] == 0).numpy().tolist() == want.tolist()
    assert batch.position_ids[0].tolist() == [1, 2, 3, 3, 1, 2, 3, 3]


def test_mc2_formula_independent_of_package():
    t, f = [SCORES[a] for a in ("A.", "B.", "C.")], [SCORES[a] for a in ("X.", "Y.", "Z.")]
    hand = sum(math.exp(x) for x in t) / (sum(math.exp(x) for x in t) + sum(math.exp(x) for x in f))
    assert hand == pytest.approx(MC2_HAND, abs=1e-6) and M.mc2(t, f) == pytest.approx(hand, abs=1e-12)


def test_category_breakdown_hand_computed():
    task = tt.TruthfulQAMC.__new__(tt.TruthfulQAMC)
    task._items = []  # no items: each record's own category and type
    recs = [{"category": "Misconceptions", "type": "Adversarial", "mc1": 1.0, "mc2": 0.6, "mc3": 0.5, "mc1_lmeval": 1.0},
            {"category": "Misconceptions", "type": "Non-Adversarial", "mc1": 0.0, "mc2": 0.2, "mc3": 0.0,
             "mc1_lmeval": 0.0},
            {"category": "Law", "type": "Adversarial", "mc1": 0.0, "mc2": 0.4, "mc3": 1.0, "mc1_lmeval": 1.0}]
    b = task.breakdown(recs)
    means = lambda g: {k: v for k, v in g.items() if k != "stats"}  # noqa: E731
    assert means(b["category"]["Misconceptions"]) == pytest.approx({"n": 2, "mc1": 0.5, "mc2": 0.4, "mc3": 0.25,
                                                                    "mc1_lmeval": 0.5})
    assert b["category"]["Law"]["n"] == 1 and b["category"]["Law"]["mc3"] == 1.0
    assert means(b["type"]["Adversarial"]) == pytest.approx({"n": 2, "mc1": 0.5, "mc2": 0.5, "mc3": 0.75,
                                                            "mc1_lmeval": 1.0})
    # per-group stderr with ddof=1 (lm-eval's rule): mc1 [1, 0] -> sd 0.7071 / sqrt 2 = 0.5 (ddof=0 gives 0.354);
    # mc2 [0.6, 0.2] -> 0.2; one item (Law) has none; the 95% CI lies within the group's values
    st = b["category"]["Misconceptions"]["stats"]
    assert st["mc1"]["stderr"] == pytest.approx(0.5) and st["mc2"]["stderr"] == pytest.approx(0.2)
    assert 0.0 <= st["mc1"]["ci_lo"] < 0.5 < st["mc1"]["ci_hi"] <= 1.0 and st["mc1"]["n"] == 2
    assert b["category"]["Law"]["stats"]["mc1"]["stderr"] is None
    from contrastkit.eval.report import breakdown_markdown

    lines = breakdown_markdown({"strategies": {"greedy": {"breakdown": b}}, "item_metrics": ["mc1"]})
    assert "| Misconceptions | 0.5000 (2) |" in lines and "| Law | 0.0000 (1) |" in lines
