"""MC scoring speed: ``contrastkit.score`` with the shared prompt (one prompt pass, KV cache expanded over
the answers) vs every (prompt + answer) sequence on its own, in the same run, on SmolLM2.

The prompt is a few-shot QA primer built from HaluEval (records 0..shots-1), like TruthfulQA's
6-shot MC prompt; each question is scored against its right and hallucinated answer plus
``--extra`` answers borrowed from other questions (TruthfulQA MC has ~4-13 answers per question).

    python benchmarks/score_shared_prompt.py --questions 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", default=None, help="amateur adapter for the icd/lol rows (skipped if absent)")
    ap.add_argument("--data", default="../shared/data/halueval/qa_data_first1000.json")
    ap.add_argument("--shots", type=int, default=6)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--extra", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strategies", default="icd,lol", help="contrastive rows (with --adapter)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    import contrastkit
    from contrastkit.alignment.induce import read_halueval
    from contrastkit.models import load_model

    torch.set_num_threads(args.threads)
    recs = read_halueval(args.data)
    primer = "".join(f"Q: {r['question']}\nA: {r['right_answer']}\n\n" for r in recs[:args.shots])
    qs = recs[args.shots:args.shots + args.questions]
    contexts = [primer + f"Q: {r['question']}\nA:" for r in qs]
    pool = [r["right_answer"] for r in recs[500:600]]
    answers = [[" " + r["right_answer"], " " + r["hallucinated_answer"]] + [" " + a for a in pool[i:i + args.extra]]
               for i, r in enumerate(qs)]
    model, tok = load_model(args.model)
    rows = [("greedy", {})]
    if args.adapter:
        rows += [(name, {"amateur": args.adapter}) for name in args.strategies.split(",") if name]
    out = {}
    prompt_tokens = len(tok(contexts[0])["input_ids"])
    n_ans = sum(len(a) for a in answers)
    print(f"{len(contexts)} questions x {n_ans / len(contexts):.0f} answers, prompt ~{prompt_tokens} tokens, "
          f"threads={args.threads}")
    print(f"{'scorer':<8}{'shared s':>10}{'separate s':>12}{'speedup':>9}{'max |diff|':>12}", flush=True)
    for name, params in rows:
        contrastkit.score(model, tok, contexts[:1], answers[:1], name, **params)  # warm-up
        res, t = {}, {}
        for share in (True, False):
            t0 = time.perf_counter()
            res[share] = contrastkit.score(model, tok, contexts, answers, name, share_prompt=share, batch_size=16,
                                           **params)
            t[share] = time.perf_counter() - t0
        diff = max(abs(a - b) for ra, rb in zip(res[True], res[False]) for ca, cb in zip(ra, rb)
                   for a, b in zip(ca.token_scores, cb.token_scores))
        out[name] = r = {"shared_s": t[True], "separate_s": t[False], "speedup": t[False] / t[True],
                         "max_abs_diff": diff}
        print(f"{name:<8}{r['shared_s']:>10.2f}{r['separate_s']:>12.2f}{r['speedup']:>9.2f}{r['max_abs_diff']:>12.2e}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
