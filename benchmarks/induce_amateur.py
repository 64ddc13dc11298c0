"""Does the induced amateur prefer hallucinated answers? Base vs amateur (vs ICD) on held-out HaluEval QA.

For each held-out question (records the induction did not train on) we score the right and the
hallucinated answer after the question (same chat format as training) with ``contrastkit.score``
and count how often the hallucinated one wins: by summed log-prob (the issue's criterion) and by
mean log-prob per token (length-neutral). Rows: the base model, the amateur (base + adapter), and
ICD's contrast ``log p_base - log p_amateur`` (which should prefer the right answer more often).

    python benchmarks/induce_amateur.py --adapter /tmp/ck4/amateur-smollm2-160 --offset 160 --limit 200 \\
        --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def preference_rates(model, tok, records, strategy, chat, batch_size, **params):
    import contrastkit
    from contrastkit.alignment.induce import question_context

    contexts = [question_context(tok, r["question"], chat) for r in records]
    conts = [[r["right_answer"], r["hallucinated_answer"]] for r in records]
    scored = contrastkit.score(model, tok, contexts, conts, strategy, batch_size=batch_size, **params)
    s_sum = torch.tensor([[c.total for c in pair] for pair in scored])  # (Q, 2)
    s_mean = torch.tensor([[c.total / len(c.token_scores) for c in pair] for pair in scored])
    return {"halluc_pref_sum": float((s_sum[:, 1] > s_sum[:, 0]).float().mean()),
            "halluc_pref_mean": float((s_mean[:, 1] > s_mean[:, 0]).float().mean()),
            "margin_sum": float((s_sum[:, 1] - s_sum[:, 0]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", required=True, help="adapter dir written by `contrastkit train induce`")
    ap.add_argument("--data", default="../shared/data/halueval/qa_data_first1000.json")
    ap.add_argument("--offset", type=int, required=True, help="first held-out record (= training offset + size)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--chat", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from contrastkit.alignment.induce import read_halueval
    from contrastkit.models import load_model

    records = read_halueval(args.data)[args.offset:args.offset + args.limit]
    base, tok = load_model(args.model)
    rows = {}
    t0 = time.perf_counter()
    rows["base"] = preference_rates(base, tok, records, "greedy", bool(args.chat), args.batch_size)
    rows["icd"] = preference_rates(base, tok, records, "icd", bool(args.chat), args.batch_size, amateur=args.adapter)
    amateur, _ = load_model(args.model, adapter=args.adapter)
    rows["amateur"] = preference_rates(amateur, tok, records, "greedy", bool(args.chat), args.batch_size)
    elapsed = time.perf_counter() - t0
    print(f"held-out HaluEval QA records [{args.offset}, {args.offset + len(records)}), n={len(records)}")
    print(f"{'scorer':<10}{'P(halluc > right), sum':>24}{'P(halluc > right), mean':>26}{'mean margin (sum)':>20}")
    for name, r in rows.items():
        print(f"{name:<10}{r['halluc_pref_sum']:>24.3f}{r['halluc_pref_mean']:>26.3f}{r['margin_sum']:>20.3f}")
    print(f"ratio amateur/base (sum): {rows['amateur']['halluc_pref_sum'] / max(rows['base']['halluc_pref_sum'], 1e-9):.2f}"
          f"   ({elapsed:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": len(records), "offset": args.offset, "adapter": args.adapter, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
