"""``contrastkit train export``: merge a trained LoRA adapter into its base model and save safetensors.

Example::

    contrastkit train dpo --train_file pairs.jsonl --output_dir runs/dpo
    contrastkit train export --adapter runs/dpo --output_dir runs/dpo-merged
    contrastkit generate "Hello" --model runs/dpo-merged

The base model is ``--model``, else the ``model`` recorded in the adapter folder's
``train_summary.json`` (written by ``contrastkit train dpo|hypo|treg``), else the adapter's
``base_model_name_or_path``. The merged folder holds ``model.safetensors`` (``merge_and_unload``:
W + scale * B A folded into each target weight), the config and the tokenizer, so plain
``transformers.AutoModelForCausalLM.from_pretrained(OUT)`` loads it without peft. It is written to a
temporary folder and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    build_dataclass,
    parse_with_config,
    run_command,
)
from contrastkit.errors import UsageError

PROG = "contrastkit train export"


@dataclass
class ExportConfig:
    """What to merge and where to write it."""

    adapter: str | None = field(default=None, metadata={
        "help": "PEFT adapter folder to merge (e.g. the output_dir of contrastkit train dpo/hypo/treg). Required."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Folder for the merged model (must not exist yet, or be empty). Required."})
    model: str | None = field(default=None, metadata={
        "help": "Base model (default: the model recorded in the adapter's train_summary.json, else the adapter's "
                "base_model_name_or_path)."})
    dtype: str | None = field(default=None, metadata={"help": "dtype of the saved weights (default float32)."})

    def __post_init__(self):
        for name in ("adapter", "output_dir"):
            if not getattr(self, name):
                raise UsageError(f"--{name} is required")
        adapter = Path(self.adapter).expanduser()
        if not (adapter / "adapter_config.json").is_file():
            raise UsageError(f"adapter '{self.adapter}' has no adapter_config.json (expected a PEFT adapter folder)")
        out = Path(self.output_dir).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"output_dir '{self.output_dir}' already exists and is not empty")


def base_model_of(cfg: ExportConfig) -> str:
    """``--model``, else train_summary.json's ``model``, else adapter_config.json's ``base_model_name_or_path``."""
    if cfg.model:
        return cfg.model
    adapter = Path(cfg.adapter).expanduser()
    summary = adapter / "train_summary.json"
    if summary.is_file():
        model = json.loads(summary.read_text()).get("model")
        if model:
            return model
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"adapter '{cfg.adapter}' does not name its base model; pass --model")
    return base


def export(cfg: ExportConfig) -> dict:
    """Merge ``cfg.adapter`` into its base and save it under ``cfg.output_dir``; returns a summary dict."""
    from contrastkit.models import load_model

    base = base_model_of(cfg)
    model, tok = load_model(base, adapter=cfg.adapter, dtype=cfg.dtype, purpose="train")
    merged = model.merge_and_unload()
    out = Path(cfg.output_dir).expanduser()
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()  # empty (checked in ExportConfig)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.name for p in out.iterdir())
    return {"base": base, "adapter": cfg.adapter, "output_dir": str(out), "files": files}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file whose keys are these flags (flags override it).")
    add_dataclass_arguments(parser, ExportConfig)
    return parser


def main(argv: list[str]) -> int:
    def body() -> int:
        cfg = build_dataclass(ExportConfig, vars(parse_with_config(build_parser(), argv)))
        summary = export(cfg)
        print(f"merged {summary['adapter']} into {summary['base']}: {summary['output_dir']} "
              f"({', '.join(summary['files'])})")
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
