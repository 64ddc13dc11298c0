"""Train a RankGen-style ranker (Krishna et al. 2022, arXiv 2205.09726 section 2.2, App. A.1).

Objective: in-batch InfoNCE with **no temperature** over raw dot products. For a minibatch of k
pairs from one document with prefixes p_i, gold continuations c_i and generated continuations
g_i::

    loss = mean_i -log( exp(p_i·c_i) / (Σ_j exp(p_i·c_j) + Σ_j exp(p_i·g_j)) )

The other golds are INBOOK negatives, the g_j GENERATIVE negatives (nucleus p=0.9 samples of
the prefix from a generator loaded through :func:`contrastkit.models.load_model`; the paper used
a fine-tuned T5-XXL). Ours, where the paper differs or is silent: the mean over i instead of the
sum (a learning-rate scale), AdamW at a constant 2e-5 instead of Adafactor at 2e-3, dropout off
(so resumed runs equal uninterrupted ones), a fresh projection initialised to the identity (so
"before training" is the plain encoder), and mean pooling for sentence encoders such as MiniLM
(``pooling=first`` is RankGen's first-token state).

Held-out accuracy: for every pair of the held-out documents, the gold continuation must score
strictly higher than every negative: the other golds of its document (up to ``batch_size - 1``)
and its generated continuation.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastkit.errors import UsageError
from contrastkit.io import atomic_write
from contrastkit.rankers.data import Pair, inbook_batches, load_documents, make_pairs
from contrastkit.rankers.rankgen import META_FILE, RankGenEncoder, RankGenMeta, RankGenRanker

STATE_FILE = "trainer_state.json"


def infonce_loss(p: torch.Tensor, c: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """RankGen loss: (k, d) prefixes, golds, generated negatives (optional); mean over the k rows."""
    cands = c if g is None else torch.cat([c, g], dim=0)  # (k or 2k, d)
    logits = p @ cands.T  # (k, k[+k]) raw dot products, no temperature
    return F.cross_entropy(logits.float(), torch.arange(p.shape[0], device=p.device))


def build_ranker(cfg) -> RankGenRanker:
    """A saved ranker to keep training, or a fresh encoder + identity projection."""
    p = Path(cfg.encoder).expanduser()
    if p.is_dir() and ((p / META_FILE).exists() or (p / "pytorch_model.bin").exists()):
        return RankGenRanker.load(str(p), device="cpu")
    from contrastkit.models import load_encoder

    encoder, tok = load_encoder(cfg.encoder, device="cpu")
    module = RankGenEncoder(encoder, cfg.pooling)
    with torch.no_grad():
        module.projection.weight.copy_(torch.eye(module.projection.in_features))
    meta = RankGenMeta(max_prefix_tokens=cfg.max_prefix_tokens, max_suffix_tokens=cfg.max_suffix_tokens,
                       pooling=cfg.pooling)
    return RankGenRanker(module, tok, meta, device="cpu")


def prepare_pairs(cfg) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, held-out pairs): the last ``eval_documents`` documents are held out."""
    docs = load_documents(cfg.data, data_config=cfg.data_config, split=cfg.split, max_documents=cfg.max_documents)
    if len(docs) <= cfg.eval_documents:
        raise UsageError(f"data has {len(docs)} documents; need more than eval_documents={cfg.eval_documents}")
    pairs = [p for i, d in enumerate(docs) for p in make_pairs(
        i, d, prefix_words=cfg.prefix_words, min_continuation_words=cfg.min_continuation_words,
        max_continuation_words=cfg.max_continuation_words)]
    cut = len(docs) - cfg.eval_documents
    train = [p for p in pairs if p.doc < cut]
    held = [p for p in pairs if p.doc >= cut][:cfg.eval_pairs]
    if not inbook_batches(train, cfg.batch_size):
        raise UsageError("no training document yields 2 pairs; lower prefix_words or add text")
    return train, held


def generate_negatives(cfg, pairs: list[Pair], out_dir: Path) -> dict[str, str]:
    """Nucleus samples of every prefix from the generator, cached in ``negatives.jsonl`` (resumable)."""
    if not cfg.generator or cfg.generator == "none":
        return {}
    key_of = {p.prefix: _neg_key(cfg, p.prefix) for p in pairs}
    path = out_dir / "negatives.jsonl"
    cache = {}
    if path.exists():
        cache = {r["key"]: r["text"] for r in map(json.loads, path.read_text().splitlines()) if r}
    todo = sorted({p for p in key_of if key_of[p] not in cache})
    if todo:
        from tqdm.auto import tqdm

        from contrastkit.generation import generate
        from contrastkit.models import load_model

        model, tok = load_model(cfg.generator)
        with open(path, "a", encoding="utf-8") as f:
            for s in tqdm(range(0, len(todo), cfg.generator_batch_size), desc="generative negatives", unit="batch"):
                chunk = todo[s:s + cfg.generator_batch_size]
                res = generate(model, tok, chunk, "sample", max_new_tokens=cfg.generator_max_new_tokens,
                               top_p=cfg.generator_top_p, seed=cfg.seed + s, batch_size=len(chunk))
                for prefix, r in zip(chunk, res):
                    cache[key_of[prefix]] = r.text.strip()
                    f.write(json.dumps({"key": key_of[prefix], "text": r.text.strip()}) + "\n")
        del model
    return {p: cache[k] for p, k in key_of.items()}


def _neg_key(cfg, prefix: str) -> str:
    what = [cfg.generator, cfg.generator_top_p, cfg.generator_max_new_tokens, cfg.seed, prefix]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]


def heldout_accuracy(ranker: RankGenRanker, held: list[Pair], negatives: dict[str, str], group: int) -> float:
    """Fraction of held-out pairs whose gold beats (strictly) every in-document and generated negative."""
    if not held:
        return float("nan")
    ranker.module.eval()
    wins = []
    for batch in inbook_batches(held, group) or [list(range(len(held)))]:
        ps = [held[i].prefix for i in batch]
        golds = [held[i].continuation for i in batch]
        gens = [negatives[p] for p in ps] if negatives else []
        P = ranker.encode_prefixes(ps)
        C = ranker.encode_continuations(golds + gens)
        S = P @ C.T  # (k, k[+k]); column i is gold i, columns k+j the generated negatives
        k = len(batch)
        gold = S[torch.arange(k), torch.arange(k)]
        neg = S.clone()
        neg[torch.arange(k), torch.arange(k)] = float("-inf")
        if gens:  # only a pair's own generated continuation is its generative negative
            gen_block = torch.full((k, k), float("-inf"))
            gen_block[torch.arange(k), torch.arange(k)] = S[torch.arange(k), k + torch.arange(k)]
            neg = torch.cat([neg[:, :k], gen_block], dim=1)
        wins.append(gold > neg.max(dim=1).values)
    return torch.cat(wins).float().mean().item()


def latest_checkpoint(out_dir: Path) -> Path | None:
    cks = [p for p in out_dir.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return max(cks, key=lambda p: int(p.name.split("-")[1])) if cks else None


def save_checkpoint(ranker, optimizer, step: int, out_dir: Path) -> Path:
    """checkpoint-<step>/: the ranker (loadable as is), the optimizer state and the step, written atomically."""
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".checkpoint-{step}.tmp"
    ranker.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"global_step": step}))
    if final.exists():
        import shutil

        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def batch_order(batches: list[list[int]], epochs: int, seed: int) -> list[list[int]]:
    """The full, deterministic batch sequence (shuffled per epoch), so resume skips exactly what was done."""
    order = []
    for e in range(epochs):
        idx = list(range(len(batches)))
        random.Random(seed + e).shuffle(idx)
        order += [batches[i] for i in idx]
    return order


def write_summary(out_dir: Path, summary: dict) -> None:
    with atomic_write(out_dir / "train_summary.json") as f:
        json.dump(summary, f, indent=1)
