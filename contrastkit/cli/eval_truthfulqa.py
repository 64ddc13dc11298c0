"""``contrastkit eval truthfulqa``: TruthfulQA MC1/MC2/MC3 (and generation) for several strategies side by side.

Example::

    contrastkit eval truthfulqa --model smollm2 --strategies greedy,icd --amateur PATH \\
        --data ../shared/data/truthfulqa/hub_013686a/mc_task.json --preset qa-primer --limit 100 \\
        --output_dir runs/tqa

Writes ``records/<label>.jsonl`` (resumable; label = strategy + a short parameter hash, or
``--label``), ``summary.json``, ``results.md`` and plots to ``--output_dir``; rerunning the same
command continues where an interrupted run stopped, and the report covers every run in the directory.
A changed data file, model, adapter, amateur, preset or strategy parameter is refused (naming the
field) unless ``--overwrite``; ``--limit`` and ``--batch_size`` never force a recompute.
"""

from __future__ import annotations

import sys

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    build_dataclass,
    parse_with_config,
    run_command,
)
from contrastkit.cli.eval_open_ended import (
    add_run_arguments,
    generation_backend,
    load_run_model,
    parse_strategy_args,
    run_model_identity,
)

PROG = "contrastkit eval truthfulqa"
MODES = {"mc": "contrastkit.eval.truthfulqa_tasks:TruthfulQAMC", "gen": "contrastkit.eval.truthfulqa_tasks:TruthfulQAGen"}


def build_parser() -> ArgumentParser:
    from contrastkit.eval.truthfulqa_tasks import TruthfulQAConfig

    p = ArgumentParser(prog=PROG, description="TruthfulQA multiple choice (MC1/MC2/MC3) and generation.")
    add_run_arguments(p)
    p.add_argument("--mode", default=None, help="mc, gen or mc,gen (default: mc)")
    add_dataclass_arguments(p, TruthfulQAConfig, group_title="TruthfulQA")
    return p


def run(argv: list[str]) -> int:
    import importlib

    from contrastkit.errors import UsageError, did_you_mean
    from contrastkit.eval.runner import parse_strategies, run_evaluation
    from contrastkit.eval.truthfulqa_tasks import TruthfulQAConfig

    args = parse_with_config(build_parser(), argv)
    modes = [m.strip() for m in (args.mode or "mc").split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise UsageError(f"unknown --mode '{m}'.{did_you_mean(m, MODES)} Known: {', '.join(MODES)}")
    cfg = build_dataclass(TruthfulQAConfig, vars(args))
    specs = parse_strategies(args.strategies or "greedy", parse_strategy_args(args.strategy_args),
                             {"amateur": args.amateur}, labels=args.label)
    if args.backend == "vllm" and "mc" in modes:
        raise UsageError("--backend vllm runs generation only (--mode gen): TruthfulQA MC scores given answers "
                         "under a strategy's rule, which needs the model's logits here")
    backend = generation_backend(args, specs)
    model, tok = load_run_model(args)
    for m in modes:
        module, _, attr = MODES[m].partition(":")
        task = getattr(importlib.import_module(module), attr)(model, tok, cfg)
        task.backend = backend
        out = args.output_dir if len(modes) == 1 else f"{args.output_dir}/{m}"
        summary = run_evaluation(task, specs, out, chunk_size=args.chunk_size or task.default_chunk_size, seed=args.seed or 0,
                                 overwrite=bool(args.overwrite), model_name=args.model, progress=not args.quiet,
                                 model_ident=run_model_identity(model, backend))
        from pathlib import Path

        for w in summary.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
        print((Path(out) / "results.md").read_text())
        print(f"wrote {out}/summary.json, results.md, {', '.join(summary.get('plots', []))}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
