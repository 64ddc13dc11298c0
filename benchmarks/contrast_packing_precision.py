"""Packed vs unpacked TruthfulQA MC scores under the contrast rules, in fp32 and in float64.

The packed scorer (``PrefixCachedScorer`` with a :mod:`contrastkit.eval.packed_contrast` rule)
and the unpacked path (``contrastkit.score``) compute the same sums with different matrix
shapes, so in fp32 they differ by rounding. DoLa's and LOL's early exits skip the final norm:
their per-token log-probs run to hundreds of nats, and the rounding of the body's hidden states
moves the summed scores of SmolLM2 by a few 1e-4. This script separates "rounding" from "a
different rule": the same questions are scored by both paths with the model (and amateur) in
fp32 and again in float64. In float64 the two paths must agree to far below 1e-4; a packing error
(an answer seeing a sibling, a shifted position, a wrong layer) would show in both precisions.

For each dtype the table gives, per rule: max |packed - unpacked|, the same for the unpacked path
against itself at ``batch_size=1`` (the noise of a batch-layout change alone), the largest |score|
and the wall times.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/contrast_packing_precision.py --amateur /work/runs/amateur \\
        --limit 16 --json /tmp/precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "truthfulqa" / "hub_013686a" / "mc_task.json"


def max_abs(a, b) -> float:
    return max(abs(x - y) for r1, r2 in zip(a, b) for x, y in zip(r1, r2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--amateur", required=True, help="amateur for icd/lol (an adapter dir from `contrastkit train induce`)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=16, help="questions (the first N of the file)")
    p.add_argument("--rules", nargs="*", default=["icd", "dola", "lol"])
    p.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    p.add_argument("--lol_refocus", type=float, default=0.5, help="lol's gamma (0.5: all three streams run)")
    p.add_argument("--no_self", action="store_true", help="skip the unpacked-vs-itself (batch size 1) column")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context, load_truthfulqa, score_answers
    from contrastkit.models import load_model

    items = load_truthfulqa(args.data)[: args.limit]
    contexts = [build_context(it.question) for it in items]
    answers = [[" " + a for a in it.answers()] for it in items]
    specs = {"icd": {"amateur": args.amateur}, "dola": {},
             "lol": {"amateur": args.amateur, "refocus_weight": args.lol_refocus}}
    rows = []
    for dtype in args.dtypes:
        model, tok = load_model(args.model)
        model = model.to(getattr(torch, dtype))
        for rule in args.rules:
            params = specs[rule]
            t0 = time.perf_counter()
            got = score_answers(model, tok, contexts, answers, rule, cached_scorer=PrefixCachedScorer(model, tok),
                                **params)
            t1 = time.perf_counter()
            ref = score_answers(model, tok, contexts, answers, rule, packed=False, **params)
            t2 = time.perf_counter()
            again = None if args.no_self else score_answers(model, tok, contexts, answers, rule, packed=False,
                                                            batch_size=1, **params)
            row = {"dtype": dtype, "rule": rule, "packed_vs_unpacked": max_abs(got, ref),
                   "unpacked_self": max_abs(again, ref) if again is not None else float("nan"), "max_abs_score": max(abs(x) for r in ref for x in r),
                   "packed_s": t1 - t0, "unpacked_s": t2 - t1}
            rows.append(row)
            print(f"{dtype} {rule}: packed vs unpacked {row['packed_vs_unpacked']:.1e}", file=sys.stderr, flush=True)
        del model
    print(f"\n{len(items)} questions, {sum(map(len, answers))} answers, model {args.model}, amateur {args.amateur}, "
          f"lol gamma {args.lol_refocus}, torch threads {torch.get_num_threads()}")
    print("| dtype | rule | max abs packed - unpacked | unpacked vs itself (batch 1) | largest |score| | packed s | "
          "unpacked s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['rule']} | {r['packed_vs_unpacked']:.1e} | {r['unpacked_self']:.1e} | "
              f"{r['max_abs_score']:.0f} | {r['packed_s']:.1f} | {r['unpacked_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": len(items), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
