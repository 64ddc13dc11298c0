"""Check contrastkit's TruthfulQA MC1/MC2 against stock lm-evaluation-harness, per question, on one model.

lm-eval's own ``truthfulqa_mc1`` / ``truthfulqa_mc2`` task files (same prompt, same metrics) are
copied to a temporary directory with only the dataset pointed at a local copy of
``hub_013686a/mc_task.json`` (the file the Hub dataset was built from), then run with the
``hf`` backend on the same in-memory model. Prints, per question, the largest absolute
difference of answer log-likelihoods, MC1 and MC2, plus both wall times.

``--backend contrastkit`` runs the same lm-eval tasks through our lm-eval model plugin
(:mod:`contrastkit.eval.lm_eval_model`) instead of ``hf``, under ``--strategy`` (any registered
strategy; ``--amateur`` for the contrastive ones): lm-eval's own pipeline and metrics on our
scores, compared with our harness under the same strategy.

    .venv/bin/python benchmarks/eval_lmeval_agreement.py --limit 10 --json /tmp/agree.json
    .venv/bin/python benchmarks/eval_lmeval_agreement.py --limit 817 --backend contrastkit
    .venv/bin/python benchmarks/eval_lmeval_agreement.py --limit 50 --backend contrastkit --strategy dola

Needs the ``lm-eval`` extra (``pip install 'contrastkit[lm-eval]'``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "truthfulqa" / "hub_013686a" / "mc_task.json"


def write_local_tasks(data: Path, limit: int, tmp: Path, every: int = 1) -> list[str]:
    """Copy lm-eval's truthfulqa mc task files, pointing them at a local JSONL of the first ``limit`` items."""
    import lm_eval

    src = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    rows = json.loads(data.read_text())[::every][:limit]
    jsonl = tmp / "tqa_mc.jsonl"
    with open(jsonl, "w") as f:
        for r in rows:  # the HF dataset's layout: {"choices": [...], "labels": [...]}
            f.write(json.dumps({"question": r["question"],
                                "mc1_targets": {"choices": list(r["mc1_targets"]), "labels": list(r["mc1_targets"].values())},
                                "mc2_targets": {"choices": list(r["mc2_targets"]), "labels": list(r["mc2_targets"].values())}})
                    + "\n")
    shutil.copy(src / "utils.py", tmp / "utils.py")
    for name in ("truthfulqa_mc1.yaml", "truthfulqa_mc2.yaml"):
        text = (src / name).read_text()
        text = text.replace("dataset_path: truthfulqa/truthful_qa", "dataset_path: json")
        text = text.replace("dataset_name: multiple_choice",
                            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    validation: {jsonl}")
        text = text.replace("task: truthfulqa_mc", "task: ck_local_truthfulqa_mc").replace("  - truthfulqa\n", "  - ck_local\n")
        (tmp / f"ck_local_{name}").write_text(text.replace("include: truthfulqa_mc1.yaml",
                                                            "include: ck_local_truthfulqa_mc1.yaml"))
    return ["ck_local_truthfulqa_mc1", "ck_local_truthfulqa_mc2"]


def run_lm_eval(model, tok, tasks, tmp: Path, batch_size: int, backend: str = "hf", strategy: str = "greedy",
                params: dict | None = None):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if backend == "hf":
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    else:
        from contrastkit.eval.lm_eval_model import ContrastkitLM

        lm = ContrastkitLM(model=model, tokenizer=tok, strategy=strategy, batch_size=batch_size, check_greedy=False,
                           **(params or {}))
    t0 = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(tmp)), log_samples=True,
                          bootstrap_iters=0)
    elapsed = time.perf_counter() - t0
    per = {}
    for task in tasks:
        key = "mc1" if task.endswith("mc1") else "mc2"
        for s in out["samples"][task]:
            lls = [float(r[0]) for r in s["filtered_resps"]]
            per.setdefault(s["doc_id"], {})[key] = {"acc": float(s["acc"]), "ll": lls}
    return per, elapsed


def run_ours(model, tok, data: Path, limit: int, batch_size: int, strategy: str = "greedy", params: dict | None = None,
             every: int = 1):
    from contrastkit.eval.metrics import mc_metrics
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context, load_truthfulqa, score_answers

    items = load_truthfulqa(data)[::every][:limit]
    scorer = PrefixCachedScorer(model, tok, batch_size=batch_size)
    t0 = time.perf_counter()
    scores = score_answers(model, tok, [build_context(it.question) for it in items],
                           [[" " + a for a in it.answers()] for it in items], strategy, batch_size=batch_size,
                           cached_scorer=scorer, **(params or {}))
    elapsed = time.perf_counter() - t0
    per = {}
    for i, (it, sc) in enumerate(zip(items, scores)):
        by = dict(zip(it.answers(), sc))
        s1, s2 = [by[a] for a in it.mc1_choices], [by[a] for a in it.mc2_choices]
        m = mc_metrics(s1, it.mc1_labels, s2, it.mc2_labels)
        per[i] = {"mc1": {"acc": m["mc1_lmeval"], "ll": s1}, "mc2": {"acc": m["mc2"], "ll": s2}}
    return per, elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--every", type=int, default=1, help="take every K-th question (a sample spread over the file)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--backend", choices=["hf", "contrastkit"], default="hf",
                   help="lm-eval model: its own hf backend, or our plugin under --strategy")
    p.add_argument("--strategy", default="greedy", help="scoring rule of ours (and of the contrastkit backend)")
    p.add_argument("--amateur", default=None, help="amateur for contrastive strategies")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 avoids oversubscription)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.backend == "hf" and args.strategy != "greedy":
        p.error("the hf backend scores with plain log-probs: use --backend contrastkit for other strategies")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from contrastkit.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(args.model)
    params = {"amateur": args.amateur} if args.amateur else {}
    ours, t_ours = run_ours(model, tok, Path(args.data), args.limit, 32, args.strategy, params, args.every)
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write_local_tasks(Path(args.data), args.limit, Path(tmp), args.every)
        theirs, t_theirs = run_lm_eval(model, tok, tasks, Path(tmp), args.batch_size, args.backend, args.strategy,
                                       params)
    rows, worst = [], {"ll": 0.0, "mc1": 0.0, "mc2": 0.0}
    for i in sorted(ours):
        d_ll = max(abs(a - b) for k in ("mc1", "mc2") for a, b in zip(ours[i][k]["ll"], theirs[i][k]["ll"]))
        d1 = abs(ours[i]["mc1"]["acc"] - theirs[i]["mc1"]["acc"])
        d2 = abs(ours[i]["mc2"]["acc"] - theirs[i]["mc2"]["acc"])
        rows.append({"question": i, "max_abs_ll_diff": d_ll, "mc1_diff": d1, "mc2_diff": d2,
                     "mc2_ours": ours[i]["mc2"]["acc"], "mc2_lm_eval": theirs[i]["mc2"]["acc"]})
        worst = {"ll": max(worst["ll"], d_ll), "mc1": max(worst["mc1"], d1), "mc2": max(worst["mc2"], d2)}
    print(f"{'q':>3} {'max|dll|':>10} {'|dMC1|':>7} {'|dMC2|':>10} {'MC2 ours':>9} {'MC2 lm-eval':>11}")
    for r in rows:
        print(f"{r['question']:>3} {r['max_abs_ll_diff']:>10.2e} {r['mc1_diff']:>7.0f} {r['mc2_diff']:>10.2e} "
              f"{r['mc2_ours']:>9.5f} {r['mc2_lm_eval']:>11.5f}")
    print(f"max |d loglik| {worst['ll']:.2e}  max |d MC1| {worst['mc1']:.0f}  max |d MC2| {worst['mc2']:.2e}")
    print(f"wall time: contrastkit harness {t_ours:.1f}s, lm-eval ({args.backend} backend) {t_theirs:.1f}s, "
          f"ratio {t_theirs / t_ours:.1f}x; strategy {args.strategy}")
    result = {"limit": args.limit, "every": args.every, "model": args.model, "data": args.data, "backend": args.backend,
              "strategy": args.strategy, "worst": worst, "rows": rows,
              "time_contrastkit_s": t_ours, "time_lm_eval_s": t_theirs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if worst["ll"] < 1e-4 and worst["mc1"] == 0 and worst["mc2"] < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
