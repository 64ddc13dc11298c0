"""TruthfulQA MC scoring speed: primer-cached batched scoring vs one answer at a time (same scores).

Baseline (what lm-eval's hf backend does per request): every answer is scored as its own
full sequence, few-shot primer included (``contrastkit.score`` with batch_size 1). Ours:
:class:`contrastkit.eval.truthfulqa.PrefixCachedScorer`, the primer's KV cache computed once,
each question's answers in one batched pass. Both run in the same process on the same questions;
the table shows questions/s and the speed-up, and the max |score difference|.

    .venv/bin/python benchmarks/truthfulqa_mc.py --limit 8 --json /tmp/tqa_speed.json
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
    p.add_argument("--limit", type=int, default=8, help="questions (the first N of the file)")
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
    with torch.no_grad():
        t0 = time.perf_counter()
        ours = PrefixCachedScorer(model, tok, batch_size=32).score(contexts, answers)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = [[score(model, tok, c, [a], "greedy", batch_size=1)[0][0].total for a in ans]
                for c, ans in zip(contexts, answers)]
        t_base = time.perf_counter() - t0
    diff = max(abs(x - y) for r1, r2 in zip(ours, base) for x, y in zip(r1, r2))
    rows = [("one answer at a time (baseline)", t_base), ("primer KV cache + batched answers", t_ours)]
    print(f"{len(items)} questions, {n_answers} answers, model {args.model}, torch threads {torch.get_num_threads()}")
    print("| method | wall s | questions/s | speed-up |\n|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.1f} | {len(items) / t:.3f} | {t_base / t:.1f}x |")
    print(f"max |score difference| = {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": len(items), "answers": n_answers, "baseline_s": t_base,
                                               "ours_s": t_ours, "speedup": t_base / t_ours, "max_abs_diff": diff}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
