"""Packed MC scoring under the contrast rules (cd, icd, dola, lol) against a from-scratch reference.

Reference (written here, sharing no code with the package): every answer as its own full sequence
``context + answer``, cache-free forwards with ``output_hidden_states=True`` of the expert, of the
amateur (a separate model, or the expert with its LoRA adapter merged in) and of the refocus
stream ``instruction + context + answer``; per answer token, in float64: the early exits, the
per-position JSD with its tolerant argmax, and the explicit lambda and gamma terms, summed over
the answer. The packed path must give the same sums; the unpacked path (``contrastkit.score``)
too; and the eval harness must take the packed path for these strategies.
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.decoding.amateur import bind_tokenizer
from contrastkit.decoding.contrast_scores import js_divergence, select_premature
from contrastkit.eval.truthfulqa import PrefixCachedScorer, score_answers
from contrastkit.testing import tiny_gpt2, tiny_llama

N = 4  # layers of the tiny models (the contrast_models fixture has 4)
INSTR = [9, 10, 11, 12]
PRIMER = "Q: what is red? A: a colour. Q: where is the sea? A: far away."
QUESTIONS = [" Q: who saw the dog?", " Q: once upon a time there lived a king, who?", " Q: is the tree red?"]
ANSWERS = [[" A: the cat saw it.", " A: the king.", " A: the cat did not."],
           [" A: a king.", " A: the dog was red.", " A: nobody", " A: a king and a cat."],
           [" A: yes", " A: no, it was not red.", " A: yes it is red."]]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lsm(x):
    return torch.log_softmax(x.double(), dim=-1)


def jsd(lp, lq):
    p, q = lp.exp(), lq.exp()
    m = (p + q) / 2
    return float(0.5 * (p * (lp - m.log())).sum() + 0.5 * (q * (lq - m.log())).sum())


def head_and_norm(model):
    if hasattr(model, "model"):
        return model.lm_head, model.model.norm
    return model.lm_head, model.transformer.ln_f


def early_exit(model, hidden, j, pos, norm):
    head, ln = head_and_norm(model)
    h = hidden[j][0, pos]
    if norm and j < N:
        h = ln(h)
    return lsm(head(h))


@torch.no_grad()
def reference_sum(tok, expert, amateur, context, answer, *, layers=(), lam=0.0, gam=0.0, norm=False, tol=1e-4,
                  amateur_weight=1.0):
    """Sum over the answer's tokens of the fused score (no plausibility mask: score_alpha = 0)."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    seq = tok(context + answer, add_special_tokens=False)["input_ids"]
    assert seq[:len(ctx)] == ctx
    out_e = expert(torch.tensor([seq]), output_hidden_states=True)
    out_a = amateur(torch.tensor([seq]), output_hidden_states=True) if amateur is not None else None
    out_r = expert(torch.tensor([INSTR + seq])) if gam else None
    total = 0.0
    for t in range(len(ctx), len(seq)):
        pos, token = t - 1, seq[t]
        E = lsm(out_e.logits[0, pos])
        if layers:
            cands = [early_exit(expert, out_e.hidden_states, j, pos, norm) for j in layers]
            divs = [min(jsd(E, c), math.log(2)) for c in cands]
            i = next(k for k, d in enumerate(divs) if d >= max(divs) - tol)
        if out_a is None:  # DoLa
            F = E - cands[i]
        else:
            F = E - amateur_weight * lsm(out_a.logits[0, pos])
            if lam:
                F = F + lam * (cands[i] - amateur_weight * early_exit(amateur, out_a.hidden_states, layers[i], pos,
                                                                      norm))
            if gam:
                F = F + gam * (lsm(out_r.logits[0, len(INSTR) + pos]) - E)
        total += float(F[token])
    return total


def contexts():
    return [PRIMER + q for q in QUESTIONS]


def packed(model, tok, strategy, **params):
    scorer = PrefixCachedScorer(model, tok, pack_tokens=16, rows_per_forward=2)  # several rows and forwards
    scorer.rule_slab = 5  # several fuse slabs per forward
    calls = []
    orig = scorer._forward_packed_rule
    scorer._forward_packed_rule = lambda *a: calls.append(1) or orig(*a)
    out = score_answers(model, tok, contexts(), ANSWERS, strategy, cached_scorer=scorer, **params)
    assert len(calls) >= 2, "the packed contrast path was not taken"
    return out


def assert_close(got, want, rel=2e-5, abs_=2e-4):
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            assert abs(g - w) <= abs_ + rel * abs(w), (got, want)


LOL_CASES = {
    "lambda": dict(lower_layer="1,2,3", lower_weight=0.7, refocus_weight=0.0),
    "gamma": dict(lower_layer="none", lower_weight=0.0, refocus_weight=0.6),
    "both+norm": dict(lower_layer="2", lower_weight=0.5, refocus_weight=0.5, final_norm=True, amateur_weight=0.8),
}


def ref_params(p):
    layers = () if p.get("lower_layer", "none") == "none" else tuple(int(x) for x in p["lower_layer"].split(","))
    return dict(layers=layers, lam=p.get("lower_weight", 0.0), gam=p.get("refocus_weight", 0.0),
                norm=p.get("final_norm", False), amateur_weight=p.get("amateur_weight", 1.0))


def reference_table(tok, expert, amateur, **kw):
    return [[reference_sum(tok, expert, amateur, c, a, **kw) for a in ans] for c, ans in zip(contexts(), ANSWERS)]


@pytest.mark.parametrize("case", list(LOL_CASES))
def test_packed_lol_equals_reference_separate_amateur(contrast_models, tiny_tok, case):
    expert, amateur = contrast_models
    params = dict(LOL_CASES[case], refocus_ids=INSTR)
    got = packed(expert, tiny_tok, "lol", amateur=amateur, **params)
    want = reference_table(tiny_tok, expert, amateur, **ref_params(params))
    assert_close(got, want)
    # the terms matter: plain CD (lambda = gamma = 0) is far from this rule
    cd = reference_table(tiny_tok, expert, amateur)
    assert max(abs(g - c) for gr, cr in zip(got, cd) for g, c in zip(gr, cr)) > 0.05


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_dola_equals_reference_and_selects_several_layers(tiny_tok, arch):
    maker = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]
    expert = maker(3, num_layers=N, init_range=0.3)
    got = packed(expert, tiny_tok, "dola", lower_layer="0,1,2,3")
    want = reference_table(tiny_tok, expert, None, layers=(0, 1, 2, 3))
    assert_close(got, want)
    first_only = reference_table(tiny_tok, expert, None, layers=(0,))  # a rule that ignores the JSD
    assert max(abs(g - c) for gr, cr in zip(got, first_only) for g, c in zip(gr, cr)) > 0.05


def test_packed_cd_equals_reference_and_unpacked(contrast_models, tiny_tok):
    expert, amateur = contrast_models
    got = packed(expert, tiny_tok, "cd", amateur=amateur, amateur_weight=0.5)
    assert_close(got, reference_table(tiny_tok, expert, amateur, amateur_weight=0.5))
    unpacked = score_answers(expert, tiny_tok, contexts(), ANSWERS, "cd", amateur=amateur, amateur_weight=0.5,
                             packed=False)
    assert_close(got, unpacked, rel=1e-5, abs_=1e-4)


def test_packed_icd_adapter_amateur_equals_merged_reference(tiny_tok, tmp_path):
    """ICD with a LoRA adapter amateur: the packed amateur rows run the adapter, the expert rows do not."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(5)
    get_peft_model(tiny_llama(0, init_range=0.3, num_layers=N),
                   LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                              init_lora_weights=False)).save_pretrained(str(tmp_path / "ad"))
    merged = PeftModel.from_pretrained(tiny_llama(0, init_range=0.3, num_layers=N),
                                       str(tmp_path / "ad")).merge_and_unload().eval()
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(expert, tiny_tok)
    params = dict(lower_layer="1,3", lower_weight=0.4, refocus_weight=0.3, refocus_ids=INSTR)
    got = packed(expert, tiny_tok, "lol", amateur=str(tmp_path / "ad"), **params)
    want = reference_table(tiny_tok, tiny_llama(0, init_range=0.3, num_layers=N), merged, **ref_params(params))
    assert_close(got, want)
    icd = packed(expert, tiny_tok, "icd", amateur=str(tmp_path / "ad"))
    assert_close(icd, reference_table(tiny_tok, tiny_llama(0, init_range=0.3, num_layers=N), merged))
    # the expert is still the base model afterwards (the adapter switch did not leak)
    base = PrefixCachedScorer(expert, tiny_tok).score(contexts(), ANSWERS)
    fresh = PrefixCachedScorer(tiny_llama(0, init_range=0.3, num_layers=N), tiny_tok).score(contexts(), ANSWERS)
    assert_close(base, fresh, rel=1e-6, abs_=1e-5)


def test_packed_scorer_cache_keeps_streams_apart(contrast_models, tiny_tok):
    """One scorer reused across rules and amateurs: each stream's primer cache is its own."""
    expert, amateur = contrast_models
    other = tiny_llama(7, init_range=0.3, num_layers=N)
    scorer = PrefixCachedScorer(expert, tiny_tok, pack_tokens=48)
    a = score_answers(expert, tiny_tok, contexts(), ANSWERS, "cd", amateur=amateur, cached_scorer=scorer)
    b = score_answers(expert, tiny_tok, contexts(), ANSWERS, "cd", amateur=other, cached_scorer=scorer)
    assert_close(a, reference_table(tiny_tok, expert, amateur))
    assert_close(b, reference_table(tiny_tok, expert, other))
    c = score_answers(expert, tiny_tok, contexts(), ANSWERS, "lol", amateur=amateur, cached_scorer=scorer,
                      lower_layer="none", lower_weight=0.0, refocus_weight=1.0, refocus_ids=[5, 6])
    d = score_answers(expert, tiny_tok, contexts(), ANSWERS, "lol", amateur=amateur, cached_scorer=scorer,
                      lower_layer="none", lower_weight=0.0, refocus_weight=1.0, refocus_ids=[7, 8, 9])
    # a new primer (other contexts) on the same scorer: every stream's primer cache is rebuilt
    other_ctx = ["Q: where is the dog? A: far away." + q for q in QUESTIONS]
    e = score_answers(expert, tiny_tok, other_ctx, ANSWERS, "cd", amateur=other, cached_scorer=scorer)
    want = [[reference_sum(tiny_tok, expert, other, c, x) for x in ans] for c, ans in zip(other_ctx, ANSWERS)]
    assert_close(e, want)
    global INSTR
    saved = INSTR
    try:
        INSTR = [5, 6]
        assert_close(c, reference_table(tiny_tok, expert, amateur, gam=1.0))
        INSTR = [7, 8, 9]
        assert_close(d, reference_table(tiny_tok, expert, amateur, gam=1.0))
    finally:
        INSTR = saved


def test_eval_harness_takes_the_packed_contrast_path(contrast_models, tiny_tok, monkeypatch):
    """TruthfulQA MC under icd goes through the packed scorer and its records carry the reference scores."""
    from contrastkit.eval import truthfulqa_tasks as tt
    from contrastkit.eval.truthfulqa import TruthfulQAItem

    expert, amateur = contrast_models
    calls = []
    orig = PrefixCachedScorer._forward_packed_rule
    monkeypatch.setattr(PrefixCachedScorer, "_forward_packed_rule", lambda self, *a: calls.append(1) or orig(self, *a))
    q = TruthfulQAItem(id=0, question="who saw the dog?", mc1_choices=["the cat", "the king"], mc1_labels=[1, 0],
                       mc2_choices=["the cat", "a cat", "the king"], mc2_labels=[1, 1, 0])
    task = tt.TruthfulQAMC.__new__(tt.TruthfulQAMC)  # no data loading: run_items on one hand-made item
    task.model, task.tok, task.cfg = expert, tiny_tok, tt.TruthfulQAConfig(data="x", preset="qa-primer")
    task._cached = PrefixCachedScorer(expert, tiny_tok)
    spec = type("Spec", (), {"name": "cd", "params": {"amateur": amateur}})()
    rec = task.run_items(spec, [{"item": q}])[0]
    assert calls, "the harness did not use the packed contrast scorer"
    ctx = task.context(q.question)
    want = [reference_sum(tiny_tok, expert, amateur, ctx, tt.answer_continuation(a, False)) for a in q.mc2_choices]
    assert_close([rec["mc2_scores"]], [want])


def test_select_premature_saturation_shortcut_is_exact():
    """The shortcut (skip other candidates where candidate 0 is within tolerance of ln 2) equals the full rule."""
    torch.manual_seed(0)
    V, P, L = 6, 40, 3
    mature = torch.log_softmax(torch.randn(P, V) * 3, -1)
    cands = [torch.log_softmax(torch.randn(P, V) * 3, -1) for _ in range(L)]
    # saturate some positions: candidate 0 puts all its mass where mature has (almost) none
    low = mature.argmin(-1)
    sat = torch.zeros(P, dtype=torch.bool)
    sat[::3] = True
    peaked = torch.full((V,), -200.0)
    for p in sat.nonzero().squeeze(-1).tolist():
        mature[p] = torch.log_softmax(torch.tensor([0.0] * (V - 1) + [-300.0]), -1)
        cands[0][p] = torch.log_softmax(peaked.index_fill(0, torch.tensor([V - 1]), 0.0), -1)
        cands[2][p] = cands[0][p]  # a later candidate with the same, maximal JSD: the tie goes to candidate 0
    del low
    asked = []

    def at(i, pos):
        asked.append((i, set(pos.tolist())))
        return cands[i][pos]

    full_best, full_idx = select_premature(mature, lambda i: cands[i], L, 1e-4)
    best, idx = select_premature(mature, lambda i: cands[i], L, 1e-4, exit_logprobs_at=at)
    assert torch.equal(idx, full_idx) and torch.allclose(best, full_best)
    assert (idx[sat] == 0).all() and (idx[~sat] != 0).any()
    # saturated positions never evaluate the other candidates; the others evaluate all of them
    open_ = set((~sat).nonzero().squeeze(-1).tolist())
    assert asked and all(pos == open_ for _, pos in asked) and sorted(i for i, _ in asked) == [1, 2]
    assert float(js_divergence(mature[0], cands[0][0])) == pytest.approx(math.log(2), abs=1e-6)


def test_select_premature_shortcut_near_saturation_hand_rule():
    """Candidate 0 with JSDs just below / above ln 2 - tol against a later candidate at exactly ln 2.

    The rule: candidate 0 wins iff its JSD >= max JSD - tol (= ln 2 - tol here). A shortcut that
    resolves positions too eagerly (e.g. threshold ln 2 - 10 tol) or a rule with '>' flips some.
    """
    V, tol = 8, 1e-3
    p = torch.tensor([0.5, 0.5] + [0.0] * (V - 2))
    disjoint = torch.tensor([0.0, 0.0] + [1.0 / (V - 2)] * (V - 2))
    ts = torch.logspace(-6, -1, 60)  # mixing weight of p into candidate 0: its JSD falls from ln 2
    q0 = (1 - ts)[:, None] * disjoint + ts[:, None] * p
    log = lambda x: torch.log(x.clamp_min(1e-30)).float()  # noqa: E731
    mature = log(p).expand(len(ts), V).clone()
    cands = [log(q0), log(disjoint).expand(len(ts), V).clone()]
    jsd0 = js_divergence(mature, cands[0])
    want = torch.where(jsd0 >= js_divergence(mature, cands[1]) - tol, 0, 1)
    assert 10 < int((want == 0).sum()) < 50  # both outcomes occur, near the threshold
    _, idx = select_premature(mature, lambda i: cands[i], 2, tol, exit_logprobs_at=lambda i, pos: cands[i][pos])
    assert idx.tolist() == want.tolist()


def test_js_divergence_never_exceeds_ln2():
    p = torch.log_softmax(torch.tensor([0.0, -400.0]), -1)
    q = torch.log_softmax(torch.tensor([-400.0, 0.0]), -1)
    assert float(js_divergence(p, q)) <= torch.tensor(math.log(2)).item()  # ln 2 in fp32
    # disjoint supports over a real vocabulary size: fp32 sums land up to ~5e-7 above ln 2 unclamped
    torch.manual_seed(0)
    V = 49152
    a, b = torch.randn(20, V) * 3, torch.randn(20, V) * 3
    a[:, V // 2:] -= 400
    b[:, :V // 2] -= 400
    jsd = js_divergence(torch.log_softmax(a, -1), torch.log_softmax(b, -1))
    assert (jsd <= torch.tensor(math.log(2))).all()
    assert jsd.min().item() == pytest.approx(math.log(2), abs=1e-5)
    assert float(js_divergence(p, q)) == pytest.approx(math.log(2), abs=1e-6)


def test_float64_models_score_in_float64(tiny_tok):
    """A float64 expert and amateur score in float64 end to end, packed and unpacked.

    The gaps between the packed and unpacked paths on a real model (3-4e-4 for dola/lol on SmolLM2)
    are fp32 rounding of un-normed early exits; in float64 both paths equal the float64 reference
    to ~1e-12. A path that rounds to fp32 anywhere (a ``.float()`` on the logits) is off by ~1e-7
    relative, far outside the 1e-9 allowed here.
    """
    expert = tiny_llama(0, init_range=0.3, num_layers=N).double()
    amateur = tiny_llama(1, init_range=0.3, num_layers=N).double()
    bind_tokenizer(expert, tiny_tok)
    tight = dict(rel=1e-11, abs_=1e-9)
    plain = PrefixCachedScorer(expert, tiny_tok, pack_tokens=16).score(contexts(), ANSWERS)
    assert_close(plain, [[reference_plain(tiny_tok, expert, c, a) for a in ans] for c, ans in zip(contexts(), ANSWERS)],
                 **tight)
    dola = dict(lower_layer="0,1,2,3")
    want = reference_table(tiny_tok, expert, None, layers=(0, 1, 2, 3))
    assert_close(packed(expert, tiny_tok, "dola", **dola), want, **tight)
    assert_close(score_answers(expert, tiny_tok, contexts(), ANSWERS, "dola", packed=False, **dola), want, **tight)
    lol = dict(lower_layer="1,3", lower_weight=0.4, refocus_weight=0.3, refocus_ids=INSTR)
    want = reference_table(tiny_tok, expert, amateur, **ref_params(lol))
    assert_close(packed(expert, tiny_tok, "lol", amateur=amateur, **lol), want, **tight)
    assert_close(score_answers(expert, tiny_tok, contexts(), ANSWERS, "lol", amateur=amateur, packed=False, **lol),
                 want, **tight)
    # the same models in fp32 are outside this tolerance: the check can tell the precisions apart
    e32 = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(e32, tiny_tok)
    got32 = packed(e32, tiny_tok, "dola", **dola)
    assert max(abs(g - w) for gr, wr in zip(got32, reference_table(tiny_tok, expert, None, layers=(0, 1, 2, 3)))
               for g, w in zip(gr, wr)) > 1e-8


@torch.no_grad()
def reference_plain(tok, model, context, answer):
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    seq = tok(context + answer, add_special_tokens=False)["input_ids"]
    lp = lsm(model(torch.tensor([seq])).logits[0])
    return sum(float(lp[t - 1, seq[t]]) for t in range(len(ctx), len(seq)))


def test_packed_scorer_two_adapters_on_one_expert(tiny_tok, tmp_path):
    """Two adapter amateurs share the expert's PEFT wrapper (one model object): each keeps its own primer cache."""
    from peft import LoraConfig, PeftModel, get_peft_model

    dirs, merged = [], []
    for seed in (5, 6):
        body = tiny_llama(0, init_range=0.3, num_layers=N)
        torch.manual_seed(seed)  # after the body (its maker seeds the RNG): the LoRA weights differ per seed
        get_peft_model(body,
                       LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
                       ).save_pretrained(str(tmp_path / f"ad{seed}"))
        dirs.append(str(tmp_path / f"ad{seed}"))
        merged.append(PeftModel.from_pretrained(tiny_llama(0, init_range=0.3, num_layers=N), dirs[-1])
                      .merge_and_unload().eval())
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(expert, tiny_tok)
    scorer = PrefixCachedScorer(expert, tiny_tok, pack_tokens=48)
    base = tiny_llama(0, init_range=0.3, num_layers=N)
    for i in (0, 1, 0):  # back to the first adapter after the second was attached
        got = score_answers(expert, tiny_tok, contexts(), ANSWERS, "icd", amateur=dirs[i], cached_scorer=scorer)
        assert_close(got, reference_table(tiny_tok, base, merged[i]))
    a, b = (reference_table(tiny_tok, base, m) for m in merged)
    assert max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) > 0.05  # the adapters differ


def test_packed_score_alpha_masks_like_unpacked(contrast_models, tiny_tok):
    """score_alpha > 0 (the plausibility head when scoring): packed equals unpacked, -inf where masked.

    The tiny models spread their mass over 512 tokens, so a tiny alpha already masks 6 of 10 answers.
    """
    expert, amateur = contrast_models
    got = packed(expert, tiny_tok, "cd", amateur=amateur, score_alpha=2e-5)
    want = score_answers(expert, tiny_tok, contexts(), ANSWERS, "cd", amateur=amateur, score_alpha=2e-5, packed=False)
    flat_got, flat_want = [x for r in got for x in r], [x for r in want for x in r]
    assert [math.isinf(x) for x in flat_got] == [math.isinf(x) for x in flat_want]
    n_inf = sum(map(math.isinf, flat_want))
    assert 0 < n_inf < len(flat_want)  # the mask bites on some answers, not all
    assert_close([[x for x in flat_got if not math.isinf(x)]], [[x for x in flat_want if not math.isinf(x)]])
    assert all(not math.isinf(x) for r in packed(expert, tiny_tok, "cd", amateur=amateur) for x in r)


def test_alibi_amateur_keeps_the_contrast_rule_unpacked(contrast_models, tiny_tok):
    """A separate amateur that packing would get wrong (ALiBi: Bloom) sends the rule down the unpacked path."""
    import transformers as tf

    expert, _ = contrast_models
    V = expert.get_output_embeddings().weight.shape[0]
    cfg = tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=V, bos_token_id=expert.config.bos_token_id,
                         eos_token_id=expert.config.eos_token_id, pad_token_id=tiny_tok.pad_token_id)
    torch.manual_seed(0)
    bloom = tf.BloomForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in bloom.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    scorer = PrefixCachedScorer(expert, tiny_tok, pack_tokens=48)
    calls = []
    orig = scorer._forward_packed_rule
    scorer._forward_packed_rule = lambda *a: calls.append(1) or orig(*a)
    got = score_answers(expert, tiny_tok, contexts(), ANSWERS, "cd", amateur=bloom, cached_scorer=scorer)
    assert not calls, "an ALiBi amateur went down the packed path"
    assert_close(got, reference_table(tiny_tok, expert, bloom))
