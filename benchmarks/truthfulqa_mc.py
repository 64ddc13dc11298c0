"""TruthfulQA MC scoring speed: packed primer-cached scoring vs one answer at a time (same scores).

Baseline (what lm-eval's hf backend does per request): every answer is scored as its own
full sequence, few-shot primer included (``contrastkit.score`` with batch_size 1). Then
:class:`contrastkit.eval.truthfulqa.PrefixCachedScorer` two ways, both with the primer's KV
cache computed once: ``per question`` (its fallback path: each question's answers as one
right-padded batch) and ``packed`` (the default: the answer tries of several questions packed
into the rows of one forward). The cached scorers get the questions in chunks of ``--chunk``,
as the eval runner does. All run in the same process on the same questions; the table shows
questions/s, the speed-up over the baseline, and the max |score difference| from it.

    .venv/bin/python benchmarks/truthfulqa_mc.py --limit 16 --json /tmp/tqa_speed.json
    .venv/bin/python benchmarks/truthfulqa_mc.py --limit 817 --skip_baseline   # the cached scorers only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "truthfulqa" / "hub_013686a" / "mc_task.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=16, help="questions (the first N of the file)")
    p.add_argument("--chunk", type=int, default=8, help="questions per scorer call (the runner's --chunk_size)")
    p.add_argument("--skip_baseline", action="store_true", help="time the two cached scorers only (ratio vs per question)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 avoids oversubscription)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from contrastkit.decoding.scoring import score
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context, load_truthfulqa
    from contrastkit.models import load_model

    model, tok = load_model(args.model)
    items = load_truthfulqa(args.data)[: args.limit]
    contexts = [build_context(it.question) for it in items]
    answers = [[" " + a for a in it.answers()] for it in items]
    n_answers = sum(len(a) for a in answers)

    def cached(packed: bool):
        scorer = PrefixCachedScorer(model, tok, packed=packed)
        scorer.score(contexts[:2], answers[:2])  # computes and keeps the primer cache (both pay it once, untimed)
        t0 = time.perf_counter()
        out = [row for s in range(0, len(items), args.chunk)
               for row in scorer.score(contexts[s:s + args.chunk], answers[s:s + args.chunk])]
        return out, time.perf_counter() - t0

    with torch.no_grad():
        packed, t_packed = cached(True)
        per_q, t_per_q = cached(False)
        rows = [("primer cache, per-question batches", t_per_q, per_q), ("primer cache, packed tries", t_packed, packed)]
        if args.skip_baseline:
            base, t_base, base_name = per_q, t_per_q, "per question"
        else:
            t0 = time.perf_counter()
            base = [[score(model, tok, c, [a], "greedy", batch_size=1)[0][0].total for a in ans]
                    for c, ans in zip(contexts, answers)]
            t_base, base_name = time.perf_counter() - t0, "one at a time"
            rows.insert(0, ("one answer at a time (baseline)", t_base, base))
    print(f"{len(items)} questions, {n_answers} answers, model {args.model}, torch threads {torch.get_num_threads()}")
    print(f"| method | wall s | questions/s | speed-up vs {base_name} | max abs diff |\n|---|---|---|---|---|")
    result = {"questions": len(items), "answers": n_answers, "chunk": args.chunk, "baseline": base_name, "rows": []}
    for name, t, sc in rows:
        diff = max(abs(x - y) for r1, r2 in zip(sc, base) for x, y in zip(r1, r2))
        print(f"| {name} | {t:.1f} | {len(items) / t:.3f} | {t_base / t:.2f}x | {diff:.1e} |")
        result["rows"].append({"method": name, "wall_s": t, "speedup": t_base / t, "max_abs_diff": diff})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
