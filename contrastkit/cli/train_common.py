"""Shared recipe for ``contrastkit train dpo|hypo|treg``: parse, validate, load, train, resume, summarise.

Flags come from two dataclasses: :class:`TrainScriptConfig` (model, data, LoRA) and the method's
trl config (``ContrastDPOConfig``/``HyPOConfig``/``TREGConfig``, i.e. every ``DPOConfig`` /
``TrainingArguments`` field). ``--config run.yaml`` supplies defaults and flags override it.
Everything the user can get wrong is checked before the model is loaded: the config values, the
data rows, and prompt lengths (with the tokenizer only).

Resume: ``--resume_from_checkpoint auto`` continues from the newest ``checkpoint-*`` in
``output_dir`` (or starts fresh if there is none); a path resumes from that checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    atomic_write,
    build_dataclass,
    parse_with_config,
    run_command,
)
from contrastkit.errors import UsageError

__all__ = ["TrainScriptConfig", "build_parser", "parse_configs", "load_data", "load_tokenizer", "resolve_resume",
           "run_training", "main_for"]


@dataclass
class TrainScriptConfig:
    """Model, data and LoRA options of a training run (the trainer's own options come from its config)."""

    model: str = field(default="smollm2", metadata={
        "help": "Policy model: 'smollm2' (embedded), a local HF directory, a .gguf file or a Hub id."})
    adapter: str | None = field(default=None, metadata={
        "help": "Existing PEFT adapter to keep training (the reference is then a frozen copy of it)."})
    dtype: str | None = field(default=None, metadata={"help": "Master weights dtype (default float32)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention backend: sdpa or eager."})
    train_file: str | None = field(default=None, metadata={
        "help": "Preference pairs: .jsonl[.gz] with prompt/chosen/rejected (text or chat messages), HH-RLHF "
                "transcripts, a datasets.save_to_disk folder, a dataset repo folder, or a Hub dataset id "
                "(owner/name, with dataset_config / train_split). Required."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out pairs in the same formats (optional)."})
    dataset_config: str | None = field(default=None, metadata={
        "help": "Configuration name of a Hub dataset (datasets.load_dataset(name=...)), as in trl's scripts."})
    dataset_dir: str | None = field(default=None, metadata={
        "help": "Folder inside a Hub dataset repo (datasets.load_dataset(data_dir=...)), e.g. harmless-base for "
                "Anthropic/hh-rlhf, whose subsets are folders rather than configurations."})
    train_split: str = field(default="train", metadata={
        "help": "Split used for training (a DatasetDict folder, a dataset repo folder or a Hub dataset)."})
    eval_split: str = field(default="test", metadata={"help": "Split used for evaluation (same sources)."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    offset: int = field(default=0, metadata={"help": "Skip this many training rows first."})
    eval_limit: int | None = field(default=None, metadata={"help": "Use at most this many eval rows."})
    skip_invalid_rows: bool = field(default=False, metadata={
        "help": "Drop malformed rows (e.g. empty responses) instead of stopping with an error."})
    skip_long_prompts: bool = field(default=False, metadata={
        "help": "Drop rows whose prompt alone reaches max_length instead of stopping with an error."})
    use_peft: bool = field(default=True, metadata={
        "help": "Train a LoRA adapter (reference = base with the adapter off); false = full fine-tuning."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (>= 1)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout, [0, 1)."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                           metadata={"help": "Modules that get LoRA (comma-separated)."})

    def __post_init__(self):
        from contrastkit.errors import check_range

        if not self.train_file:
            raise UsageError("train_file is required (a .jsonl[.gz] file or a datasets folder)")
        check_range("lora_r", self.lora_r, 1)
        check_range("lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        check_range("offset", self.offset, 0)
        for name in ("limit", "eval_limit"):
            check_range(name, getattr(self, name), 1)


# trl's script argument names (trl dpo --model_name_or_path ... --dataset_name ...) -> ours, so a trl YAML mostly works
TRL_ALIASES = {"model_name_or_path": "model", "dataset_name": "train_file", "dataset_train_split": "train_split",
               "dataset_test_split": "eval_split", "split": "train_split"}


def build_parser(prog: str, config_cls: type) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=(config_cls.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML file of option values; flags override it")
    add_dataclass_arguments(parser, TrainScriptConfig, group_title="model and data")
    add_dataclass_arguments(parser, config_cls, group_title="trainer (trl DPOConfig + method options)")
    aliases = parser.add_argument_group("trl names (aliases)")
    for alias, ours in TRL_ALIASES.items():
        aliases.add_argument(f"--{alias}", dest=alias, default=None, metavar=ours.upper(),
                             help=f"trl's name for --{ours}")
    return parser


def apply_aliases(args: dict) -> dict:
    """Move trl-named values onto our names; giving both names different values is an error."""
    for alias, ours in TRL_ALIASES.items():
        value = args.pop(alias, None)
        if value is None:
            continue
        if args.get(ours) is not None and args[ours] != value:
            raise UsageError(f"--{alias} ({value!r}) and --{ours} ({args[ours]!r}) name the same option; give one")
        args[ours] = value
    return args


def parse_configs(prog: str, config_cls: type, argv: list[str]):
    """``(script_config, trainer_config)`` from flags + YAML; bad values raise UsageError."""
    args = apply_aliases(vars(parse_with_config(build_parser(prog, config_cls), argv)))
    script = build_dataclass(TrainScriptConfig, args)
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    kwargs = {k: v for k, v in args.items() if k in names and v is not None}
    if kwargs.get("bf16") is None and not kwargs.get("fp16"):
        import torch

        kwargs["bf16"] = torch.cuda.is_available()  # trl turns bf16 autocast on even on CPU; we do not
    try:
        cfg = config_cls(**kwargs)
    except UsageError:
        raise
    except (TypeError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    return script, cfg


def load_data(script: TrainScriptConfig, dropped: dict | None = None):
    """``(train, eval)`` datasets; rows dropped by ``skip_invalid_rows`` go to ``dropped[name]`` as (row, reason)."""
    from contrastkit.alignment.data import load_preference_data

    dropped = {} if dropped is None else dropped
    train = load_preference_data(script.train_file, split=script.train_split, limit=script.limit,
                                 offset=script.offset, drop_invalid=script.skip_invalid_rows,
                                 dropped=dropped.setdefault("train", []), config=script.dataset_config,
                                 data_dir=script.dataset_dir)
    evals = None
    if script.eval_file:
        evals = load_preference_data(script.eval_file, split=script.eval_split, limit=script.eval_limit,
                                     drop_invalid=script.skip_invalid_rows, dropped=dropped.setdefault("eval", []),
                                     config=script.dataset_config, data_dir=script.dataset_dir)
    return train, evals


def report_dropped(dropped: dict, files: dict) -> dict:
    """Print one line per data set that lost rows (count, reasons, first row numbers); return the summary entry."""
    import sys
    from collections import Counter

    out = {}
    for name, rows in dropped.items():
        if not rows:
            continue
        reasons = Counter(reason.split(" (")[0] for _, reason in rows)
        first = ", ".join(str(n) for n, _ in rows[:5]) + (", ..." if len(rows) > 5 else "")
        why = "; ".join(f"{c}x {r}" for r, c in reasons.most_common())
        print(f"dropped {len(rows)} rows of {files[name]} ({name}): {why} (rows {first})", file=sys.stderr)
        out[name] = {"count": len(rows), "reasons": dict(reasons), "rows": [n for n, _ in rows]}
    return out


def load_tokenizer(name_or_path: str):
    """The model's tokenizer without loading its weights (an embedded GGUF is materialised once, cached)."""
    from transformers import AutoTokenizer

    from contrastkit.models import materialize_gguf, prepare_tokenizer, resolve_source

    source = resolve_source(name_or_path)
    path = materialize_gguf(source.path, source.gguf_file) if source.kind == "gguf" else source.path
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))


def resolve_resume(value, output_dir: str):
    """``None``/``false`` -> None; ``auto``/``true``/``last`` -> newest checkpoint or None; else a checked path."""
    if value in (None, False, "", "false", "no", "none"):
        return None
    if value in (True, "auto", "true", "last", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(str(value)):
        raise UsageError(f"resume_from_checkpoint '{value}' is not a checkpoint directory (or use 'auto')")
    return str(value)


def _peft_config(script: TrainScriptConfig):
    if not script.use_peft or script.adapter:
        return None
    from peft import LoraConfig

    return LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, lora_dropout=script.lora_dropout,
                      target_modules=list(script.lora_target_modules), task_type="CAUSAL_LM")


def run_training(method: str, script: TrainScriptConfig, cfg, *, trainer_kwargs: dict | None = None) -> dict:
    """Validate data, load the model through :func:`contrastkit.models.load_model`, train, save, summarise."""
    import contrastkit.alignment.trainers  # noqa: F401 - registers dpo/hypo/treg in TRAINERS
    from contrastkit.alignment.data import check_prompt_lengths
    from contrastkit.registry import TRAINERS

    dropped: dict = {}
    train, evals = load_data(script, dropped)
    tok = load_tokenizer(script.model)
    check = dict(drop=script.skip_long_prompts, truncation_mode=cfg.truncation_mode)
    train = check_prompt_lengths(train, tok, cfg.max_length, name=script.train_file, dropped=dropped["train"], **check)
    if evals is not None:
        evals = check_prompt_lengths(evals, tok, cfg.max_length, name=script.eval_file, dropped=dropped["eval"],
                                     **check)
    dropped = report_dropped(dropped, {"train": script.train_file, "eval": script.eval_file})
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)
    cfg.resume_from_checkpoint = resume
    from contrastkit.models import load_model

    model, tok = load_model(script.model, adapter=script.adapter, dtype=script.dtype,
                            attn_implementation=script.attn_implementation, purpose="train")
    trainer = TRAINERS.get(method)(model=model, args=cfg, train_dataset=train, eval_dataset=evals,
                                      processing_class=tok, peft_config=_peft_config(script), **(trainer_kwargs or {}))
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(cfg.output_dir)
    summary = {"method": method, "model": script.model, "global_step": trainer.state.global_step,
               "num_processes": trainer.accelerator.num_processes,
               "resumed_from": resume, "train_loss": result.training_loss, "metrics": result.metrics,
               "log_history": trainer.state.log_history, "treg_cache": getattr(trainer, "treg_cache", None),
               "dropped_rows": dropped, "train_rows": len(train), "eval_rows": None if evals is None else len(evals)}
    if method == "hypo":
        from contrastkit.alignment.trainers import HYPO_LOSS_PARTS

        summary["loss_parts"] = HYPO_LOSS_PARTS
    if hasattr(getattr(trainer, "_sampler", None), "summary"):  # issue 15: sync_every, staleness, off_policy
        summary["sampler"] = trainer._sampler.summary()
    if trainer.accelerator.is_main_process:
        with atomic_write(os.path.join(cfg.output_dir, "train_summary.json")) as f:
            json.dump(summary, f, indent=1, default=str)
        print(f"{method}: {trainer.state.global_step} steps, train loss {result.training_loss:.4f}; "
              f"saved to {cfg.output_dir}")
    return summary


def main_for(method: str, config_cls: type, argv: list[str]) -> int:
    """The whole ``contrastkit train <method>`` command (used by train_dpo/train_hypo/train_treg)."""
    prog = f"contrastkit train {method}"

    def body():
        script, cfg = parse_configs(prog, config_cls, argv)
        run_training(method, script, cfg)

    return run_command(prog, body)
