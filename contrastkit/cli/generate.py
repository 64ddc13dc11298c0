"""``contrastkit generate``: generate text with one or more registered strategies.

Examples::

    contrastkit generate "Once upon a time"                                   # embedded SmolLM2, greedy
    contrastkit generate "Once upon a time" --strategy greedy,sample,beam      # side by side
    contrastkit generate --input prompts.jsonl --output out.jsonl --strategy contrastive --top_k 4
    contrastkit generate "Tell me a joke" --chat --stream
    contrastkit generate --config run.yaml "Once upon a time"
    accelerate launch --num_processes 2 -m contrastkit.cli.main generate --input in.jsonl --output out.jsonl

Input JSONL records carry one of ``prompt`` (text), ``messages`` (chat) or ``input_ids``.
Output JSONL has one record per input and strategy, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

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

PROG = "contrastkit generate"
STRATEGY_FLAGS_NOTE = ("Strategy flags are hidden: this help shows only the flags of the strategies named by "
                       "--strategy (greedy by default). See a strategy's flags with "
                       "`contrastkit generate --strategy X --help`, or all of them with `contrastkit strategies`.")


@dataclass
class GenerateArgs:
    """Options of ``contrastkit generate`` that are not model or strategy parameters."""

    strategy: str = field(default="greedy", metadata={"help": "Strategy name, or a comma list to compare side by side."})
    input: str | None = field(default=None, metadata={"help": "JSONL file of prompts (prompt / messages / input_ids)."})
    output: str | None = field(default=None, metadata={"help": "Write one JSONL record per input and strategy here."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum number of new tokens, >= 1."})
    min_new_tokens: int = field(default=0, metadata={"help": "Minimum number of new tokens (EOS suppressed before)."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    chat: bool = field(default=False, metadata={"help": "Apply the chat template to text prompts."})
    stream: bool = field(default=False, metadata={"help": "Stream tokens to stdout (one prompt, one strategy)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per left-padded batch."})
    # issue 11: HF's own repetition penalty and stop strings, for every strategy (contrastkit.generate)
    repetition_penalty: float | None = field(default=None, metadata={
        "help": "HF repetition penalty (> 0, 1 = off); default: the strategy's (1.2 for dola, else 1.0)."})
    stop: list[str] | None = field(default=None, metadata={
        "help": "Stop string(s), comma-separated: a row stops once its text ends with one (kept in the text)."})
    # issue 15: greedy/sample/beam on a vLLM server instead of a local model (contrastkit/vllm_backend.py)
    backend: str = field(default="hf", metadata={
        "help": "hf (load the model here) or vllm (send greedy/sample/beam to --vllm_url; the tokenizer of --model "
                "encodes the prompts)."})
    vllm_url: str | None = field(default=None, metadata={"help": "vLLM OpenAI-compatible server URL (--backend vllm)."})
    vllm_model: str | None = field(default=None, metadata={
        "help": "Model name on the vLLM server (--backend vllm; default: the first one it lists)."})


def build_parser(strategy_names: list[str]) -> ArgumentParser:
    from contrastkit.cli.common import strategy_flag_owners
    from contrastkit.decoding.base import get_strategy

    parser = ArgumentParser(prog=PROG, description="Generate text with registered decoding strategies.",
                            epilog=STRATEGY_FLAGS_NOTE, flag_owners=strategy_flag_owners(strategy_names))
    parser.add_argument("prompts", nargs="*", help="Prompt texts (or use --input).")
    parser.add_argument("--config", help="YAML file whose keys are these options (flags override it).")
    add_dataclass_arguments(parser, GenerateArgs)
    add_dataclass_arguments(parser, ModelConfig, group_title="model")
    for name in strategy_names:
        add_dataclass_arguments(parser, get_strategy(name).config_cls, group_title=f"strategy '{name}'")
    return parser


def _requested_strategies(argv: list[str]) -> list[str]:
    """Find the strategy names before the full parse, so their flags can be added."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--strategy")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    value = known.strategy
    if value is None and known.config:
        from contrastkit.cli.common import load_yaml_config

        value = load_yaml_config(known.config, known=_all_keys()).get("strategy")
    names = list(dict.fromkeys(s.strip() for s in str(value or "greedy").split(",") if s.strip()))
    from contrastkit.decoding.base import get_strategy

    for name in names:
        get_strategy(name)  # unknown names raise with a did-you-mean
    return names


def _all_keys() -> list[str]:
    """Every key a YAML config for this command may hold (strategy parameters included)."""
    from contrastkit.registry import DECODERS

    keys = [f.name for f in dataclasses.fields(GenerateArgs)] + [f.name for f in dataclasses.fields(ModelConfig)]
    for name in DECODERS.names():
        keys += [f.name for f in dataclasses.fields(DECODERS.get(name).config_cls)]
    return keys


def collect_prompts(args) -> list:
    if args.input and args.prompts:
        raise UsageError("give prompts either as arguments or with --input, not both")
    if args.input:
        records = [rec for _, rec in read_jsonl(args.input)]
        if not records:
            raise UsageError(f"input file '{args.input}' has no records")
        return records
    if not args.prompts:
        raise UsageError("no prompt given: pass a prompt text or --input FILE")
    return list(args.prompts)


def strategy_params(args, name: str) -> dict:
    from contrastkit.decoding.base import get_strategy

    cls = get_strategy(name).config_cls
    own = {f.name for f in dataclasses.fields(GenerateArgs)}  # e.g. --seed is the run seed, passed separately
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in own and getattr(args, f.name, None) is not None}


def _process_shard(n: int):
    """``(state, indices)`` of the prompts this process handles: all of them unless run under ``accelerate launch``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, list(range(n))
    from accelerate import PartialState

    state = PartialState()  # one full model replica per process (see models.load_model)
    with state.split_between_processes(list(range(n))) as mine:
        return state, list(mine)


def run(argv: list[str]) -> int:
    import contrastkit.decoding  # noqa: F401  (registers the built-in strategies)

    names = _requested_strategies(argv)
    args = parse_with_config(build_parser(names), argv)
    opts = build_dataclass(GenerateArgs, vars(args))
    model_cfg = build_dataclass(ModelConfig, vars(args))
    prompts = collect_prompts(args)
    if opts.stream and (len(prompts) != 1 or len(names) != 1 or opts.output):
        raise UsageError("--stream needs exactly one prompt, one strategy and no --output")
    params = {name: strategy_params(args, name) for name in names}
    for name in names:  # validate every parameter before the (slow) model load
        from contrastkit.decoding.base import get_strategy

        get_strategy(name).make_config(**params[name])
    if opts.backend != "hf":  # greedy/sample/beam on a vLLM server; no local model (contrastkit/vllm_backend.py)
        return _emit(opts, model_cfg, names, prompts, _generate_on_vllm(opts, model_cfg, names, params, prompts))

    from contrastkit.generation import generate
    from contrastkit.models import load_model

    for name in names:  # a mistyped --amateur path fails here, not after the model load
        if isinstance(params[name].get("amateur"), str):
            from contrastkit.models import preflight_source

            preflight_source(params[name]["amateur"], "amateur")
    model, tokenizer = load_model(model_cfg)
    streamer = None
    if opts.stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    common = dict(max_new_tokens=opts.max_new_tokens, min_new_tokens=opts.min_new_tokens, chat=opts.chat,
                  batch_size=opts.batch_size, seed=opts.seed, streamer=streamer,
                  repetition_penalty=opts.repetition_penalty, stop=opts.stop)
    state, mine = _process_shard(len(prompts))
    shard = {}
    for name in names:  # progress per token (not per batch) for --input runs, on the main process only
        from contrastkit.cli.common import token_progress

        bar = (token_progress(len(mine), opts.max_new_tokens, opts.batch_size, f"generate[{name}]")
               if opts.input is not None and (state is None or state.is_main_process) else None)
        shard[name] = generate(model, tokenizer, [prompts[i] for i in mine], name, **common, **params[name],
                               stopping_criteria=[bar] if bar is not None else None)
        if bar is not None:
            bar.close()
    if state is not None:  # under `accelerate launch`: gather every process's records on the main one
        from accelerate.utils import gather_object

        gathered = gather_object([(i, name, shard[name][j]) for name in names for j, i in enumerate(mine)])
        if not state.is_main_process:
            return 0
        results = {name: [r for _, _, r in sorted((g for g in gathered if g[1] == name), key=lambda g: g[0])]
                   for name in names}
    else:
        results = shard
    if opts.stream:
        return 0
    return _emit(opts, model_cfg, names, prompts, results)


def _generate_on_vllm(opts, model_cfg, names: list[str], params: dict, prompts: list) -> dict:
    """``--backend vllm``: ``{strategy: [GenerationResult]}`` for every prompt, with the same options."""
    from contrastkit.errors import did_you_mean
    from contrastkit.vllm_backend import VLLMBackend, check_vllm_strategy, load_tokenizer_only

    if opts.backend != "vllm":
        raise UsageError(f"unknown --backend '{opts.backend}'.{did_you_mean(opts.backend, ['hf', 'vllm'])} "
                         f"Known: hf, vllm")
    for name in names:
        check_vllm_strategy(name)
    if not opts.vllm_url:
        raise UsageError("--backend vllm needs --vllm_url (e.g. http://127.0.0.1:8000)")
    if opts.stream:
        raise UsageError("--stream is not supported with --backend vllm")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--backend vllm runs in one process (the server batches requests); drop accelerate launch")
    backend = VLLMBackend(opts.vllm_url, opts.vllm_model)
    tok = load_tokenizer_only(model_cfg.model)
    return {name: backend.generate(None, tok, prompts, name, max_new_tokens=opts.max_new_tokens,
                                   min_new_tokens=opts.min_new_tokens, chat=opts.chat, batch_size=opts.batch_size,
                                   seed=opts.seed, repetition_penalty=opts.repetition_penalty, stop=opts.stop,
                                   **params[name]) for name in names}


def _emit(opts, model_cfg, names: list[str], prompts: list, results: dict) -> int:
    """Write the records to ``--output`` (atomically) or print the texts; the same for every backend."""
    if opts.output:
        with atomic_write(opts.output) as f:
            for i in range(len(prompts)):
                for name in names:
                    record = {"index": i, "model": model_cfg.model, **results[name][i].to_dict()}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"wrote {len(prompts) * len(names)} records to {opts.output}", file=sys.stderr)
        return 0
    for i in range(len(prompts)):
        if len(prompts) > 1 or len(names) > 1:
            print(f"=== prompt {i + 1}: {results[names[0]][i].prompt!r}")
        for name in names:
            r = results[name][i]
            prefix = f"[{name}] " if len(names) > 1 else ""
            print(f"{prefix}{r.text}")
            if len(names) > 1:
                print(f"    ({r.new_tokens} tokens, {r.time_s:.2f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_command(PROG, lambda: run(argv))
