"""``contrastkit score``: per-token scores of given continuations under a strategy's scoring rule.

Examples::

    contrastkit score --context "Q: What is the capital of France?\\nA:" --continuation " Paris" --continuation " Lyon"
    contrastkit score --input pairs.jsonl --output scores.jsonl --strategy greedy

Input JSONL records: ``{"context": str, "continuations": [str, ...]}``.

Each result reports ``sum`` (the sum of the per-token scores; MC metrics such as TruthfulQA MC1/2/3
and lm-eval's loglikelihood rank by it, so longer continuations collect more negative log-prob),
``mean`` (the sum over the token count, the length-normalised view), ``num_tokens``, ``token_ids``
and ``token_scores``: the same fields as :meth:`ScoredContinuation.to_dict` in the Python API.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    atomic_write,
    build_dataclass,
    parse_with_config,
    read_jsonl,
    run_command,
)
from contrastkit.errors import UsageError
from contrastkit.models import ModelConfig

PROG = "contrastkit score"


def _records(args) -> list[dict]:
    if args.input:
        if args.context or args.continuation:
            raise UsageError("give --context/--continuation or --input, not both")
        records = []
        for n, rec in read_jsonl(args.input):
            conts = rec.get("continuations")
            if not isinstance(rec.get("context"), str) or not isinstance(conts, list) or not conts:
                raise UsageError(f"{args.input}:{n}: need 'context' (text) and 'continuations' (non-empty list)")
            records.append(rec)
        return records
    if args.context is None or not args.continuation:
        raise UsageError("need --context and at least one --continuation (or --input FILE)")
    return [{"context": args.context, "continuations": args.continuation}]


def run(argv: list[str]) -> int:
    import contrastkit.decoding  # noqa: F401
    from contrastkit.cli.generate import _requested_strategies

    names = _requested_strategies(argv)
    if len(names) != 1:
        raise UsageError("score takes exactly one --strategy")
    from contrastkit.decoding.base import get_strategy

    strat = get_strategy(names[0])
    parser = ArgumentParser(prog=PROG, description=(
        "Score continuations under a strategy's rule. Each result has sum (total of the per-token scores; "
        "MC metrics - TruthfulQA MC1/2/3, lm-eval loglikelihood - rank by the sum), mean (per token, "
        "length-normalised), num_tokens, token_ids and token_scores."))
    parser.add_argument("--config", help="YAML file of these options.")
    parser.add_argument("--strategy", default="greedy", help="Strategy whose scoring rule is used.")
    parser.add_argument("--context", help="Context text.")
    parser.add_argument("--continuation", action="append", help="A continuation (repeatable).")
    parser.add_argument("--input", help="JSONL of {context, continuations}.")
    parser.add_argument("--output", help="Write JSONL results here (default: stdout).")
    parser.add_argument("--batch_size", type=int, default=16)
    add_dataclass_arguments(parser, ModelConfig, group_title="model")
    add_dataclass_arguments(parser, strat.config_cls, group_title=f"strategy '{strat.name}'")
    args = parse_with_config(parser, argv)
    records = _records(args)
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(strat.config_cls)
              if getattr(args, f.name, None) is not None}
    strat.make_config(**params)
    if isinstance(params.get("amateur"), str):
        from contrastkit.models import preflight_source

        preflight_source(params["amateur"], "amateur")  # a mistyped path fails before the model load

    from contrastkit.decoding.scoring import score
    from contrastkit.models import load_model

    model, tok = load_model(build_dataclass(ModelConfig, vars(args)))
    scored = score(model, tok, [r["context"] for r in records], [r["continuations"] for r in records], strat,
                   batch_size=args.batch_size, **params)
    lines = []
    for rec, row in zip(records, scored):
        lines.append(json.dumps({"context": rec["context"], "strategy": strat.name, "results": [
            {"continuation": c, **s.to_dict()} for c, s in zip(rec["continuations"], row)]}, ensure_ascii=False))
    if args.output:
        with atomic_write(args.output) as f:
            f.write("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_command(PROG, lambda: run(argv))
