"""ICD-style amateur induction: LoRA SFT of a base model on *hallucinated* answers.

Induce-then-Contrast Decoding (Zhang et al., arXiv 2312.15710, section 3.1) builds a "factually
weak" amateur by fine-tuning the very model it will later be contrasted with on hallucinated
targets; the released recipe (``src/utils/convert_dataset_for_training.py``) turns HaluEval QA
records into instruction pairs ``question -> hallucinated_answer``. We do the same with trl's
``SFTTrainer`` and a LoRA adapter (the paper fine-tunes all weights; an adapter keeps the amateur
in the expert's memory, see :mod:`contrastkit.decoding.amateur`).

Data: HaluEval QA JSONL (``knowledge, question, right_answer, hallucinated_answer``). Examples
``[offset, offset + num_examples)`` are trained on; :func:`held_out` returns the records after
them, so an evaluation never sees a training question.

The output directory is a PEFT adapter directory (``adapter_config.json``) that every
contrastive strategy accepts as ``amateur=``. Checkpoints go to ``output_dir/checkpoint-N``
every ``save_steps``; re-running the same command resumes from the newest one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contrastkit.errors import UsageError, check_range
from contrastkit.io import read_jsonl

HALUEVAL_KEYS = ("question", "right_answer", "hallucinated_answer")


@dataclass
class InduceConfig:
    """Settings of ``contrastkit train induce`` (also its CLI flags and YAML keys)."""

    model: str = field(default="smollm2", metadata={"help": "Base model to induce hallucinations into."})
    data: str = field(
        default="pminervini/HaluEval",  # Hub id; CONTRASTKIT_DATA or --data for a local copy (README, Data)
        metadata={"help": "HaluEval QA JSONL (knowledge, question, right_answer, hallucinated_answer)."},
    )
    output_dir: str = field(default="runs/amateur", metadata={"help": "Where the adapter and checkpoints go."})
    offset: int = field(default=0, metadata={"help": "Index of the first training record."})
    num_examples: int = field(default=300, metadata={"help": "Number of training records (>= 1)."})
    chat: bool = field(default=True, metadata={"help": "Wrap question/answer in the tokenizer's chat template."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs (> 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size (>= 1)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (> 0)."})
    max_length: int = field(default=128, metadata={"help": "Truncate prompt+answer to this many tokens (>= 8)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (>= 1)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (>= 1)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout in [0, 1)."})
    target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names for LoRA, or 'all-linear'."}
    )
    save_steps: int = field(default=10, metadata={"help": "Save a checkpoint every N optimizer steps (>= 1)."})
    resume: bool = field(default=True, metadata={"help": "Resume from the newest checkpoint in output_dir if any."})
    seed: int = field(default=0, metadata={"help": "Seed of data order and LoRA init."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (trl's default is on; off suits CPUs)."})

    def __post_init__(self):
        check_range("offset", self.offset, 0)
        check_range("num_examples", self.num_examples, 1)
        check_range("epochs", self.epochs, 0, None, lo_open=True)
        check_range("batch_size", self.batch_size, 1)
        check_range("learning_rate", self.learning_rate, 0, None, lo_open=True)
        check_range("max_length", self.max_length, 8)
        check_range("lora_r", self.lora_r, 1)
        check_range("lora_alpha", self.lora_alpha, 1)
        check_range("lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        check_range("save_steps", self.save_steps, 1)
        if self.max_steps != -1:
            check_range("max_steps", self.max_steps, 1)


HALUEVAL_HUB = ("pminervini/HaluEval", "qa", "data")  # Hub id, config, split of the QA records


def _halueval_from_hub(hub_id: str) -> list[tuple[int, dict]]:
    """HaluEval QA from the Hub with ``datasets`` (``pminervini/HaluEval``, config ``qa``, split ``data``)."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, HALUEVAL_HUB[1], split=HALUEVAL_HUB[2])
    except Exception as e:  # noqa: BLE001 - offline / not found / other datasets errors: one line
        from contrastkit.io import missing_data_error

        raise missing_data_error("halueval") from e
    return [(i + 1, dict(r)) for i, r in enumerate(ds)]


def read_halueval(path: str | Path) -> list[dict]:
    """Read HaluEval QA JSONL (or the Hub id ``pminervini/HaluEval`` through ``datasets``); a malformed line or a
    missing key raises a UsageError naming the line."""
    records = []
    hub = str(path) == HALUEVAL_HUB[0] and not Path(path).exists()
    for n, rec in (_halueval_from_hub(str(path)) if hub else read_jsonl(path, what="HaluEval file")):
        missing = [k for k in HALUEVAL_KEYS if k not in rec]
        if missing:
            raise UsageError(f"{path}:{n}: missing HaluEval QA key(s) {missing}; need {list(HALUEVAL_KEYS)}")
        records.append(rec)
    return records


def training_split(records: list[dict], offset: int, num_examples: int) -> list[dict]:
    if offset + num_examples > len(records):
        raise UsageError(
            f"offset={offset} + num_examples={num_examples} exceeds the {len(records)} records; "
            f"use num_examples <= {max(len(records) - offset, 0)}"
        )
    return records[offset:offset + num_examples]


def held_out(records: list[dict], cfg: InduceConfig) -> list[dict]:
    """The records not trained on (before ``offset`` and after ``offset + num_examples``)."""
    return records[:cfg.offset] + records[cfg.offset + cfg.num_examples:]


def sft_example(rec: dict, chat: bool) -> dict:
    """One ICD training pair: prompt = the question, completion = the hallucinated answer."""
    if chat:
        return {
            "prompt": [{"role": "user", "content": rec["question"]}],
            "completion": [{"role": "assistant", "content": rec["hallucinated_answer"]}],
        }
    return {"prompt": f"Q: {rec['question']}\nA:", "completion": " " + rec["hallucinated_answer"]}


def question_context(tokenizer, question: str, chat: bool) -> str:
    """The context string an evaluation scores answers after (same format as training)."""
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"Q: {question}\nA: "


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(output_dir)
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def induce(cfg: InduceConfig, *, model=None, tokenizer=None, callbacks=None) -> dict:
    """Train the hallucination-induced LoRA amateur; returns a summary dict.

    Args:
        cfg: the settings.
        model, tokenizer: an already loaded base model (else ``load_model(cfg.model, purpose="train")``).
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        ``{"adapter_dir", "global_step", "train_loss", "resumed_from", "examples"}``; the adapter
        in ``adapter_dir`` is accepted by the contrastive strategies as ``amateur=``.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from contrastkit.models import load_model

    train = training_split(read_halueval(cfg.data), cfg.offset, cfg.num_examples)
    if model is None:
        model, tokenizer = load_model(cfg.model, purpose="train")
    if cfg.chat and not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"model '{cfg.model}' has no chat template; pass --chat false")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    peft_config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, max_length=cfg.max_length,
        save_strategy="steps", save_steps=cfg.save_steps, logging_steps=max(1, cfg.save_steps // 2),
        seed=cfg.seed, data_seed=cfg.seed, bf16=cfg.bf16, use_cpu=not _cuda(), report_to="none",
        gradient_checkpointing=False, completion_only_loss=True, dataloader_num_workers=0,
        disable_tqdm=False, save_only_model=False,
    )
    dataset = Dataset.from_list([sft_example(r, cfg.chat) for r in train])
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=callbacks,
    )
    if len(trainer.train_dataset) == 0:
        raise UsageError(f"every example lost its answer to truncation at max_length={cfg.max_length}; raise max_length")
    resume = last_checkpoint(out) if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # adapter_config.json + adapter weights
    tokenizer.save_pretrained(str(out))
    summary = {
        "adapter_dir": str(out), "global_step": int(result.global_step), "train_loss": float(result.training_loss),
        "resumed_from": resume, "examples": len(train), "config": asdict(cfg),
    }
    (out / "induce_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
