"""LOL defaults by measurement: a selection grid on a TruthfulQA MC dev split, then held-out MC1/2/3 with CIs.

Split (issue 11 section 5): dev = questions [0, 400) of the 817-question set, test = [400, 817).
``--dev_n`` / ``--test_n`` take the first N of each split (CPU budget); the report prints the n used.

Why the grid is cheap: with ``score_alpha = 0`` (no plausibility mask, as ICD / DoLa score MC)
LOL's summed answer score is linear in its weights,

    S(lambda, gamma) = S_icd + lambda * S_low(j, final_norm) + gamma * S_ref,

so per answer we measure ``S_icd`` (lol with lambda = gamma = 0), ``S_icd + S_low`` (lambda = 1,
gamma = 0) for every lower layer j and ``final_norm`` in the grid, and ``S_icd + S_ref``
(lambda = 0, gamma = 1), and every (lambda, gamma) point is then exact arithmetic on those sums.
The selection metric is dev MC1 (ties: MC3, then the smaller weights); ``--select_by``. MC2 is
not used: on contrast scores it normalises exp(score), so it grows with the weights' scale alone. Lower layers are fixed indices here
(no JSD bucket), which is LOL's "early-exit lower layer" read as one layer.

Test phase: greedy (plain log-probs), icd, dola (preset defaults, ``high`` bucket) and lol with
the selected defaults on the test questions; per-question MC values get ``summarize`` (mean,
stderr, bootstrap CI) and paired bootstrap differences (icd - greedy, lol - icd, lol - dola).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lol_select.py --amateur /work/runs/amateur \\
        --dev_n 24 --test_n 0 --json /tmp/lol_dev.json            # selection only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lol_select.py --amateur /work/runs/amateur \\
        --dev_n 0 --test_n 40 --select_from /tmp/lol_dev.json --json /tmp/lol_test.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "truthfulqa" / "hub_013686a" / "mc_task.json"
DEV, TEST = (0, 400), (400, 817)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def mc_of(q, totals: dict[str, float]) -> dict:
    from contrastkit.eval.metrics import mc_metrics

    return mc_metrics([totals[a] for a in q.mc1_choices], q.mc1_labels, [totals[a] for a in q.mc2_choices],
                      q.mc2_labels)


def scores(model, tok, items, strategy, batch_size, chunk: int = 32, **params) -> list[dict[str, float]]:
    """Per question: {answer: summed score} under ``strategy`` (``chunk`` questions per packed score call)."""
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context, score_answers

    scorer = PrefixCachedScorer(model, tok, batch_size=batch_size)
    out = []
    for s in range(0, len(items), chunk):
        qs = items[s:s + chunk]
        rows = score_answers(model, tok, [build_context(q.question) for q in qs],
                             [[" " + a for a in q.answers()] for q in qs], strategy, batch_size=batch_size,
                             cached_scorer=scorer, **params)
        out.extend(dict(zip(q.answers(), row)) for q, row in zip(qs, rows))
    return out


class ComponentsRule:
    """One packed pass that yields every grid component per answer token (duck-types PackedContrastRule).

    Components, in order: ``E - A`` (S_icd), ``R - E`` (S_ref), then for each (j, final_norm) of the
    grid ``E_j - A_j`` (S_low), computed as :class:`contrastkit.decoding.contrastive_decoding.ContrastFuser`
    does for ``lol`` with ``lower_layer=j`` (a single layer: no JSD choice) and amateur_weight 1.
    """

    def __init__(self, model, tok, amateur, layers, norms):
        from contrastkit.decoding.amateur import final_norm, num_layers
        from contrastkit.decoding.base import get_strategy
        from contrastkit.eval.packed_contrast import packed_rule

        self.inner = packed_rule(model, tok, get_strategy("lol"), dict(
            amateur=amateur, lower_layer=",".join(map(str, layers)), lower_weight=1.0, refocus_weight=1.0))
        self.streams, self.layers = self.inner.streams, self.inner.layers
        self.keys = [(j, n) for j in layers for n in norms]
        self.N = num_layers(model)
        self.norm = final_norm(model)
        am = self.inner.fuser.amateur
        self.a_norm = final_norm(am.model if am.kind == "model" else model)
        self.a_head = self.inner.fuser.a_head

    def unsupported_reason(self):
        return self.inner.unsupported_reason()

    def fused_scores(self, states):
        import torch

        def lsm(x):
            return torch.log_softmax(x.float(), dim=-1)

        st = {s.name: s for s in self.streams}
        logits = {}
        for name, s in st.items():
            with s.switch():
                logits[name] = s.inner.get_output_embeddings()(states[name][0])
        E, A, R = lsm(logits["expert"]), lsm(logits["amateur"]), lsm(logits["refocus"])
        out = [E - A, R - E]
        head = st["expert"].inner.get_output_embeddings()
        for j, n in self.keys:
            he, ha = states["expert"][1][j], states["amateur"][1][j]
            if n and j < self.N:
                he, ha = self.norm(he), self.a_norm(ha)
            out.append(lsm(head(he)) - lsm(self.a_head(ha)))
        return out


def components(model, tok, items, args, layers, norms, log, chunk: int = 32) -> dict:
    """S_icd, S_low[(j, norm)] and S_ref per question and answer, all from one packed pass."""
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context

    rule = ComponentsRule(model, tok, args.amateur, layers, norms)
    scorer = PrefixCachedScorer(model, tok, batch_size=args.batch_size)
    t0 = time.perf_counter()
    per_q = []
    for s in range(0, len(items), chunk):
        qs = items[s:s + chunk]
        rows = scorer.score([build_context(q.question) for q in qs], [[" " + a for a in q.answers()] for q in qs],
                            rule=rule)
        per_q.extend(dict(zip(q.answers(), row)) for q, row in zip(qs, rows))
        log(f"  components: {min(s + chunk, len(items))}/{len(items)} questions, {time.perf_counter() - t0:.0f} s")
    comp = {"icd": [{a: v[0] for a, v in q.items()} for q in per_q],
            "ref": [{a: v[1] for a, v in q.items()} for q in per_q],
            "low": {f"{j}|{n}": [{a: v[2 + k] for a, v in q.items()} for q in per_q]
                    for k, (j, n) in enumerate(rule.keys)}}
    # the one-pass components against the lol strategy itself (packed), on a few questions and grid points
    check = items[:min(4, len(items))]
    worst = 0.0
    for j, n in rule.keys[:2]:
        direct = scores(model, tok, check, "lol", args.batch_size, amateur=args.amateur, lower_layer=str(j),
                        final_norm=n, lower_weight=0.5, refocus_weight=0.25)
        for q, d in enumerate(direct):
            for a, v in d.items():
                want = comp["icd"][q][a] + 0.5 * comp["low"][f"{j}|{n}"][q][a] + 0.25 * comp["ref"][q][a]
                worst = max(worst, abs(v - want) / max(1.0, abs(v)))
    comp["check_max_rel_diff"] = worst
    log(f"  components vs the lol strategy (4 questions, 2 grid points): max rel diff {worst:.1e}")
    if worst > 1e-3:  # fp32 noise is ~1e-5 relative; a wrong component is off by O(1)
        raise SystemExit(f"one-pass components disagree with the lol strategy (max rel diff {worst:.1e})")
    return comp


def combine(comp, key, lam, gam) -> list[dict[str, float]]:
    out = []
    for n, icd in enumerate(comp["icd"]):
        low = comp["low"][key][n] if lam else None
        ref = comp["ref"][n] if gam else None
        out.append({a: icd[a] + (lam * low[a] if lam else 0.0) + (gam * ref[a] if gam else 0.0) for a in icd})
    return out


def grid(comp, items, args) -> list[dict]:
    import numpy as np

    rows = []
    for key in comp["low"]:
        j, norm = key.split("|")
        for lam, gam in itertools.product(args.lambdas, args.gammas):
            mcs = [mc_of(q, t) for q, t in zip(items, combine(comp, key, lam, gam))]
            rows.append({"lower_layer": int(j), "final_norm": norm == "True", "lower_weight": lam,
                         "refocus_weight": gam, **{m: float(np.mean([r[m] for r in mcs])) for m in ("mc1", "mc2", "mc3")}})
    return rows


def summarize_split(model, tok, items, args, chosen, log) -> dict:
    from contrastkit.eval.stats import paired_bootstrap, summarize

    runs = {"greedy": ("greedy", {}), "icd": ("icd", dict(amateur=args.amateur)), "dola": ("dola", {}),
            "lol": ("lol", dict(amateur=args.amateur, lower_layer=str(chosen["lower_layer"]),
                                final_norm=chosen["final_norm"], lower_weight=chosen["lower_weight"],
                                refocus_weight=chosen["refocus_weight"]))}
    runs = {k: v for k, v in runs.items() if k in args.methods}
    per = {}
    for name, (strategy, params) in runs.items():
        t0 = time.perf_counter()
        per[name] = [mc_of(q, t) for q, t in zip(items, scores(model, tok, items, strategy, args.batch_size, **params))]
        log(f"  {name}: {time.perf_counter() - t0:.0f} s")
    table = {name: {m: summarize([r[m] for r in recs]) for m in ("mc1", "mc2", "mc3")} for name, recs in per.items()}
    pairs = {}
    for a, b in (("icd", "greedy"), ("lol", "icd"), ("lol", "dola"), ("dola", "greedy")):
        if a not in per or b not in per:
            continue
        pairs[f"{a} - {b}"] = {m: paired_bootstrap([r[m] for r in per[a]], [r[m] for r in per[b]])
                               for m in ("mc1", "mc2", "mc3")}
    return {"table": table, "paired": pairs, "params": {k: v[1] for k, v in runs.items()}, "per_question": per}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--amateur", required=True, help="the ICD amateur (contrastkit train induce output dir)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="817-question mc_task.json")
    p.add_argument("--dev_n", type=int, default=24, help="first N dev questions (0 = skip selection)")
    p.add_argument("--test_n", type=int, default=40, help="first N test questions (0 = skip the test phase)")
    p.add_argument("--layers", default="4,8,15,23", help="lower layers j (hidden_states index) in the grid")
    p.add_argument("--final_norm", default="false,true", help="final_norm values in the grid")
    p.add_argument("--lambdas", type=floats, default=floats("0,0.25,0.5,1,2"))
    p.add_argument("--gammas", type=floats, default=floats("0,0.25,0.5,1,2"))
    p.add_argument("--select_by", default="mc1", choices=["mc1", "mc2", "mc3"],
                   help="dev metric that picks the defaults. Not mc2: on contrast scores MC2 normalises "
                        "exp(score), so it grows with the weights' scale alone (it chose the largest lambda of "
                        "every grid tried: 2 of 0..2, then 6 of 0..6)")
    p.add_argument("--components_from", default=None, help="JSON of an earlier dev run: re-grid its saved components")
    p.add_argument("--select_from", default=None, help="JSON of an earlier selection run (its 'selected')")
    p.add_argument("--lol", default=None, help="test lol with these settings instead of a selection: "
                   "LAYER,FINAL_NORM,LAMBDA,GAMMA (e.g. the shipped defaults 15,false,0.5,0.5)")
    p.add_argument("--methods", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=["greedy", "icd", "dola", "lol"], help="test-phase methods (subset of greedy,icd,dola,lol)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from contrastkit.decoding.contrastive_decoding import bind_tokenizer
    from contrastkit.eval.truthfulqa import load_truthfulqa
    from contrastkit.models import load_model

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    model, tok = load_model(args.model)
    bind_tokenizer(model, tok)
    items = load_truthfulqa(args.data)
    if len(items) != 817:
        raise SystemExit(f"expected the 817-question set, got {len(items)} items from {args.data}")
    report = {"model": args.model, "amateur": args.amateur, "data": args.data, "split": {"dev": DEV, "test": TEST}}
    chosen = None
    if args.dev_n:
        dev = items[DEV[0]:DEV[0] + args.dev_n]
        log(f"dev: {len(dev)} questions")
        norms = [x.strip().lower() == "true" for x in args.final_norm.split(",")]
        t_dev = time.perf_counter()
        if args.components_from:  # re-grid / re-select from an earlier run's saved components (no model pass)
            comp = json.loads(Path(args.components_from).read_text())["components"]
            comp["check_max_rel_diff"] = float("nan")
            dev = dev[:len(comp["icd"])]
        else:
            comp = components(model, tok, dev, args, [int(j) for j in args.layers.split(",")], norms, log)
        rows = grid(comp, dev, args)
        report["dev_seconds"] = time.perf_counter() - t_dev
        report["components_check_max_rel_diff"] = comp["check_max_rel_diff"]
        m = args.select_by
        tie = {"mc1": "mc3", "mc2": "mc1", "mc3": "mc1"}[m]
        rows.sort(key=lambda r: (-r[m], -r[tie], r["lower_weight"] + r["refocus_weight"]))
        chosen = rows[0]
        report["select_by"] = m
        report.update(dev_n=len(dev), grid=rows, selected=chosen,
                      components={k: comp[k] for k in ("icd", "ref", "low")})  # re-grid later without a pass
        print(f"dev n={len(dev)}: top 8 of {len(rows)} grid points by {m.upper()} (ties: {tie.upper()}, then smaller weights)")
        print("| j | final_norm | lambda | gamma | MC1 | MC2 | MC3 |\n|---|---|---|---|---|---|---|")
        for r in rows[:8]:
            print(f"| {r['lower_layer']} | {r['final_norm']} | {r['lower_weight']} | {r['refocus_weight']} | "
                  f"{r['mc1']:.3f} | {r['mc2']:.3f} | {r['mc3']:.3f} |")
        icd0 = next(r for r in rows if r["lower_weight"] == 0 and r["refocus_weight"] == 0)
        print(f"(lambda = gamma = 0, i.e. icd: MC1 {icd0['mc1']:.3f} MC2 {icd0['mc2']:.3f} MC3 {icd0['mc3']:.3f})")
    elif args.select_from:
        chosen = json.loads(Path(args.select_from).read_text())["selected"]
    if args.lol:
        j, norm, lam, gam = args.lol.split(",")
        chosen = {"lower_layer": int(j), "final_norm": norm.strip().lower() == "true", "lower_weight": float(lam),
                  "refocus_weight": float(gam)}
    if args.test_n:
        if chosen is None:
            raise SystemExit("the test phase needs a selection: --dev_n > 0 or --select_from")
        test = items[TEST[0]:TEST[0] + args.test_n]
        log(f"test: {len(test)} questions, lol = {chosen}")
        res = summarize_split(model, tok, test, args, chosen, log)
        report.update(test_n=len(test), test=res)
        print(f"\ntest n={len(test)} (questions {TEST[0]}..{TEST[0] + len(test) - 1}); mean [95% bootstrap CI]")
        print("| method | MC1 | MC2 | MC3 |\n|---|---|---|---|")
        for name, t in res["table"].items():
            cells = [f"{t[m]['mean']:.3f} [{t[m]['ci_lo']:.3f}, {t[m]['ci_hi']:.3f}]" for m in ("mc1", "mc2", "mc3")]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("\n| paired difference | MC1 | MC2 | MC3 |\n|---|---|---|---|")
        for name, d in res["paired"].items():
            cells = [f"{d[m]['diff']:+.3f} [{d[m]['lo']:+.3f}, {d[m]['hi']:+.3f}] p={d[m]['p_value']:.2f}"
                     for m in ("mc1", "mc2", "mc3")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
