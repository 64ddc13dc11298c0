"""``contrastkit eval open-ended``: rep-n, diversity, MAUVE, coherence and length for several strategies.

Example::

    contrastkit eval open-ended --model smollm2 --strategies greedy,sample,contrastive \\
        --data ../shared/data/wikitext103_test/wiki.test.raw --limit 50 --output_dir runs/open

Writes ``records/<strategy>.jsonl`` (resumable), ``summary.json``, ``results.md`` and
``mauve_vs_diversity.png`` to ``--output_dir``. The run options below are shared with
``contrastkit eval truthfulqa``.
"""

from __future__ import annotations

import json
import sys

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    build_dataclass,
    parse_with_config,
    run_command,
)

PROG = "contrastkit eval open-ended"


def add_run_arguments(p: ArgumentParser) -> None:
    """Options every eval command shares: model, strategies and their params, output, resume."""
    p.add_argument("--config", help="YAML file of option defaults (flags override)")
    p.add_argument("--model", default="smollm2", help="embedded name, local HF directory or GGUF (default: smollm2)")
    p.add_argument("--adapter", default=None, help="optional PEFT adapter directory")
    p.add_argument("--strategies", default=None, help="comma-separated registered strategies (default: greedy)")
    p.add_argument("--strategy_args", default=None,
                   help='JSON mapping strategy -> its parameters, e.g. \'{"sample": {"top_p": 0.95}}\'')
    p.add_argument("--amateur", default=None, help="amateur model, passed to every strategy that takes 'amateur'")
    p.add_argument("--label", default=None, help=(
        "run label(s), one per strategy, comma-separated (default: the strategy name plus a short hash of its "
        "parameters); records go to records/<label>.jsonl"))
    p.add_argument("--output_dir", required=True, help=(
        "directory for records, summary.json, results.md, plots; the report covers every run recorded there"))
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--chunk_size", type=int, default=None, help="items per cache flush (default: 32 for TruthfulQA MC, 8 otherwise)")
    p.add_argument("--overwrite", action="store_true", help=(
        "recompute this invocation's runs instead of resuming (needed when the data, model, adapter, amateur, "
        "preset or strategy parameters changed)"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 is much faster on an oversubscribed CPU")
    p.add_argument("--backend", default="hf", help=(
        "hf (generate here) or vllm (generation tasks send greedy/sample/beam to --vllm_url; --model still gives "
        "the tokenizer and, for open-ended, the coherence scorer, so it should be the model the server serves)"))
    p.add_argument("--vllm_url", default=None, help="vLLM OpenAI-compatible server URL (--backend vllm)")
    p.add_argument("--vllm_model", default=None,
                   help="model name on the vLLM server (--backend vllm; default: the first one it lists)")


def parse_strategy_args(text) -> dict:
    from contrastkit.errors import UsageError

    if not text:
        return {}
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--strategy_args is not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise UsageError('--strategy_args must map strategy names to parameter objects, e.g. {"sample": {"top_p": 0.9}}')
    return value


def generation_backend(args, specs):
    """``None`` for ``--backend hf``; for ``--backend vllm`` a :class:`contrastkit.vllm_backend.VLLMBackend`,
    after checking that every strategy can run there and that the server answers."""
    from contrastkit.errors import UsageError, did_you_mean

    backend = getattr(args, "backend", None) or "hf"
    if backend == "hf":
        return None
    if backend != "vllm":
        raise UsageError(f"unknown --backend '{backend}'.{did_you_mean(backend, ['hf', 'vllm'])} Known: hf, vllm")
    if not args.vllm_url:
        raise UsageError("--backend vllm needs --vllm_url (the server's base URL, e.g. http://127.0.0.1:8000)")
    from contrastkit.vllm_backend import VLLMBackend, check_vllm_strategy

    for spec in specs:
        check_vllm_strategy(spec.name)
    vllm = VLLMBackend(args.vllm_url, args.vllm_model)
    vllm.model()  # fail now, before any model loads, if the server does not answer
    return vllm


def run_model_identity(model, backend) -> dict | None:
    """The cache's model identity: the local weights, plus the served model when generation runs on vLLM.

    ``None`` means "the runner's default" (the local weights only). The served weights cannot be hashed
    from here, so a vLLM run is keyed by the served model's name; the server's URL is not part of it.
    """
    if backend is None:
        return None
    from contrastkit.models import weights_identity

    return {**weights_identity(model), "backend": "vllm", "served_model": backend.model()}


def load_run_model(args):
    from contrastkit.errors import check_range
    from contrastkit.models import load_model, preflight_source

    if getattr(args, "amateur", None):
        preflight_source(args.amateur, "amateur")  # a mistyped path fails before the model loads

    if args.threads is not None:
        import torch

        check_range("--threads", args.threads, 1)
        torch.set_num_threads(args.threads)
    return load_model(args.model, adapter=args.adapter)


def build_parser() -> ArgumentParser:
    from contrastkit.eval.open_ended import OpenEndedConfig

    p = ArgumentParser(prog=PROG, description="Open-ended generation quality of decoding strategies.")
    add_run_arguments(p)
    add_dataclass_arguments(p, OpenEndedConfig, group_title="open-ended")
    return p


def run(argv: list[str]) -> int:
    from pathlib import Path

    from contrastkit.eval.open_ended import OpenEnded, OpenEndedConfig
    from contrastkit.eval.runner import parse_strategies, run_evaluation

    args = parse_with_config(build_parser(), argv)
    cfg = build_dataclass(OpenEndedConfig, vars(args))
    specs = parse_strategies(args.strategies or "greedy", parse_strategy_args(args.strategy_args),
                             {"amateur": args.amateur}, labels=args.label)
    if cfg.mauve:
        import importlib.util

        if importlib.util.find_spec("mauve") is None:
            from contrastkit.errors import UsageError

            raise UsageError("MAUVE needs the optional 'mauve-text' package: pip install 'contrastkit[mauve]' "
                             "(or pass --mauve false)")
    backend = generation_backend(args, specs)
    model, tok = load_run_model(args)
    task = OpenEnded(model, tok, cfg, seed=args.seed or 0)
    task.backend = backend
    summary = run_evaluation(task, specs, args.output_dir, chunk_size=args.chunk_size or 8, seed=args.seed or 0,
                             overwrite=bool(args.overwrite), model_name=args.model, progress=not args.quiet,
                             model_ident=run_model_identity(model, backend))
    print((Path(args.output_dir) / "results.md").read_text())
    print(f"wrote {args.output_dir}/summary.json, results.md, {', '.join(summary.get('plots', []))}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
