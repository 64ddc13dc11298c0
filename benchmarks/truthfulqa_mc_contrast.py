"""TruthfulQA MC under the contrast rules: packed scoring time per rule vs the plain rule, and exactness.

All rules run in one process on the same questions, chunked as the eval runner does (``--chunk``
questions per scorer call, default 32 = ``TruthfulQAMC.default_chunk_size``), each with one untimed
warm-up call that computes the primer caches and loads the amateur. The rules are interleaved
chunk by chunk and the ratios use CPU time (``time.process_time``), so load from other processes
on a shared machine does not bias them (wall time is printed too):

* ``plain``: log-probs through the packed prefix-trie scorer (the baseline of the ratios);
* ``icd``: expert - amateur (the adapter from ``contrastkit train induce``), both streams packed;
* ``dola``: expert - its JSD-selected premature layer (preset ``high`` bucket), early exits only
  at answer positions;
* ``lol``: icd + lambda x lower-layer contrast + gamma x refocus stream (preset defaults, except
  gamma = ``--lol_refocus`` 0.5, so that all three streams are timed; the preset's gamma is 0).

Exactness: on the first ``--check_n`` questions each rule is also scored by the unpacked path
(``contrastkit.score``, its shared-prompt batches), and the table gives max |packed - unpacked|
and the largest difference relative to the score's size. DoLa's and LOL's early exits skip the
final norm, so their per-token scores run to hundreds of nats and fp32 rounding alone moves them
by ~1e-7 x that; the ``unpacked self`` column is the unpacked path against itself with another
batch layout (``batch_size=1``), the noise floor any layout change has.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/truthfulqa_mc_contrast.py --amateur /work/runs/amateur \\
        --limit 817 --check_n 16 --json /tmp/tqa_contrast.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "truthfulqa" / "hub_013686a" / "mc_task.json"
TARGETS = {"plain": 1.0, "icd": 3.0, "dola": 2.0, "lol": 4.0}  # issue 10: times the plain rule's time


def max_diff(a, b):
    abs_d = max(abs(x - y) for r1, r2 in zip(a, b) for x, y in zip(r1, r2))
    rel_d = max(abs(x - y) / max(1.0, abs(y)) for r1, r2 in zip(a, b) for x, y in zip(r1, r2))
    return abs_d, rel_d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--amateur", required=True, help="amateur for icd/lol (an adapter dir from `contrastkit train induce`)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=64, help="questions (the first N of the file)")
    p.add_argument("--chunk", type=int, default=32, help="questions per scorer call (the runner's chunk)")
    p.add_argument("--check_n", type=int, default=8, help="questions also scored unpacked (0 = skip)")
    p.add_argument("--rules", nargs="*", default=["plain", "icd", "dola", "lol"])
    p.add_argument("--lol_refocus", type=float, default=0.5,
                   help="lol's gamma here (its default is 0 since the dev selection; 0.5 times all three streams)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context, load_truthfulqa, score_answers
    from contrastkit.models import load_model

    model, tok = load_model(args.model)
    items = load_truthfulqa(args.data)[: args.limit]
    contexts = [build_context(it.question) for it in items]
    answers = [[" " + a for a in it.answers()] for it in items]
    specs = {"plain": ("greedy", {}), "icd": ("icd", {"amateur": args.amateur}), "dola": ("dola", {}),
             "lol": ("lol", {"amateur": args.amateur, "refocus_weight": args.lol_refocus})}
    rows, result = [], {"questions": len(items), "answers": sum(map(len, answers)), "chunk": args.chunk,
                        "threads": torch.get_num_threads(), "rows": []}
    # Interleaved: every chunk is scored by every rule in turn, so a change of machine load between
    # the start and the end of the run falls on all rules alike; CPU time (process_time) is recorded
    # next to wall time, and is what the ratios use (the machine these numbers come from is shared).
    scorers, packed, wall, cpu = {}, {}, {}, {}
    for name in args.rules:
        strategy, params = specs[name]
        scorers[name] = PrefixCachedScorer(model, tok)
        score_answers(model, tok, contexts[:1], answers[:1], strategy, cached_scorer=scorers[name], **params)  # warm-up
        packed[name], wall[name], cpu[name] = [], 0.0, 0.0
    for s in range(0, len(items), args.chunk):
        for name in args.rules:
            strategy, params = specs[name]
            t0, c0 = time.perf_counter(), time.process_time()
            packed[name] += score_answers(model, tok, contexts[s:s + args.chunk], answers[s:s + args.chunk], strategy,
                                          cached_scorer=scorers[name], **params)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
        print(f"{min(s + args.chunk, len(items))}/{len(items)} questions: "
              + ", ".join(f"{n} {cpu[n]:.0f} cpu-s" for n in args.rules), file=sys.stderr, flush=True)
    for name in args.rules:
        strategy, params = specs[name]
        row = {"rule": name, "wall_s": wall[name], "cpu_s": cpu[name], "questions_per_s": len(items) / wall[name]}
        if args.check_n and name != "plain":
            n = args.check_n
            unpacked = score_answers(model, tok, contexts[:n], answers[:n], strategy, packed=False, **params)
            again = score_answers(model, tok, contexts[:n], answers[:n], strategy, packed=False, batch_size=1,
                                  **params)
            row["max_abs_diff"], row["max_rel_diff"] = max_diff(packed[name][:n], unpacked)
            row["unpacked_self_abs"], row["unpacked_self_rel"] = max_diff(again, unpacked)
            row["max_abs_score"] = max(abs(x) for r in unpacked for x in r)
        row["scores"] = packed[name]
        rows.append(row)
    base = next((r["cpu_s"] for r in rows if r["rule"] == "plain"), None)
    base_wall = next((r["wall_s"] for r in rows if r["rule"] == "plain"), None)
    result["lol_refocus"] = args.lol_refocus
    print(f"\n{len(items)} questions, {result['answers']} answers, model {args.model}, amateur {args.amateur}, "
          f"lol gamma {args.lol_refocus}, torch threads {result['threads']}, chunk {args.chunk} (rules interleaved "
          f"per chunk); exactness on the first {args.check_n}")
    print("| rule | CPU s | x plain (CPU) | wall s | x plain (wall) | target | max abs diff vs unpacked | "
          "max rel diff | unpacked self (abs / rel) | largest |score| |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["x_plain"] = r["cpu_s"] / base if base else float("nan")
        r["x_plain_wall"] = r["wall_s"] / base_wall if base_wall else float("nan")
        ex = (f"{r['max_abs_diff']:.1e} | {r['max_rel_diff']:.1e} | {r['unpacked_self_abs']:.1e} / "
              f"{r['unpacked_self_rel']:.1e} | {r['max_abs_score']:.0f}") if "max_abs_diff" in r else "- | - | - | -"
        print(f"| {r['rule']} | {r['cpu_s']:.1f} | {r['x_plain']:.2f}x | {r['wall_s']:.1f} | {r['x_plain_wall']:.2f}x | "
              f"<= {TARGETS[r['rule']]:.0f}x | {ex} |")
        result["rows"].append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
