"""T-REG token rewards by contrastive prompting, computed once with the frozen reference and cached.

Zhou et al. 2024, "T-REG: Preference Optimization with Token-Level Reward Regularization"
(arXiv 2412.02685, Sec. 3.1): each response token ``y_t`` is scored under a "better" and a
"worse" revision prompt wrapped around the original prompt ``x``::

    rhat_t = sigma(log p_ref(y_t | x_better, y_<t) - log p_ref(y_t | x_worse, y_<t)) - 0.5

The response tokens are trl's own ``chosen_ids``/``rejected_ids`` (concatenated to the
tokenized contexts, never re-tokenized), so the rewards line up with the trainer's
``completion_mask`` token for token. The result is stored under ``output_dir`` keyed by a content
hash of the token ids, the templates and the reference weights, and is reused on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from contrastkit.alignment.losses import token_rewards_from_logps

__all__ = ["tokenize_pairs", "context_ids", "completion_logps", "compute_token_rewards", "cached_token_rewards",
           "TokenRewardCollator", "LazyTokenRewards", "align_token_rewards", "cache_path", "render_heatmap",
           "reference_model_hash", "reference_adapter", "reference_context", "LAZY_ROW"]

COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")
LAZY_ROW = "treg_row"  # dataset column: (split number << 40) + row index, for lazily computed rewards


def _wrap_prompt(prompt, template: str):
    """Apply a ``{prompt}`` template to a text prompt, or to the last user message of a chat prompt."""
    if isinstance(prompt, str):
        return template.replace("{prompt}", prompt)
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    at = users[-1] if users else len(messages) - 1
    messages[at]["content"] = template.replace("{prompt}", str(messages[at]["content"]))
    return messages


def context_ids(tokenizer, prompt, template: str) -> list[int]:
    """Token ids of ``template`` wrapped around ``prompt``, tokenized the way trl tokenizes prompts."""
    wrapped = _wrap_prompt(prompt, template)
    if isinstance(wrapped, str):
        return list(tokenizer(text=wrapped)["input_ids"])
    out = tokenizer.apply_chat_template(wrapped, tokenize=True, add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


def tokenize_pairs(dataset, tokenizer) -> list[dict]:
    """``prompt_ids``/``chosen_ids``/``rejected_ids`` per row, split as trl 1.16's DPOTrainer splits them.

    Text rows get the EOS string appended to each response; chat rows go through the chat
    template; the completion starts where the tokenized prompt and prompt+response diverge.
    Used by the heatmap command, which has no trainer (training uses trl's own tokenization).
    """
    from trl.data_utils import common_prefix_length

    rows = []
    for ex in dataset:
        prompt = ex["prompt"]
        if isinstance(prompt, str):
            eos = tokenizer.eos_token or ""
            texts = [ex[c] if ex[c].endswith(eos) else ex[c] + eos for c in ("chosen", "rejected")]
            p_ids = list(tokenizer(text=prompt)["input_ids"])
            full = [list(tokenizer(text=prompt + t)["input_ids"]) for t in texts]
        else:
            p_ids = context_ids(tokenizer, prompt, "{prompt}")
            full = [list(tokenizer.apply_chat_template(prompt + ex[c], tokenize=True, return_dict=True)["input_ids"])
                    for c in ("chosen", "rejected")]
        plen = min(common_prefix_length(p_ids, f) for f in full)
        rows.append({**ex, "prompt_ids": p_ids[:plen], "chosen_ids": full[0][plen:], "rejected_ids": full[1][plen:]})
    return rows


def _check_truncation_mode(mode: str) -> None:
    if mode not in ("keep_start", "keep_end"):
        from contrastkit.errors import UsageError

        raise UsageError(f"truncation_mode must be 'keep_start' or 'keep_end', got {mode!r}")


@torch.no_grad()
def completion_logps(model, contexts: list[list[int]], completions: list[list[int]], pad_token_id: int,
                     batch_size: int = 4, progress: bool = False) -> list[torch.Tensor]:
    """Per-token log-probs of each completion given its context: a list of (len(completion),) fp32 tensors."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    starts = range(0, len(contexts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="T-REG token rewards (reference forwards)", unit="batch")
    for start in starts:
        ctx, comp = contexts[start:start + batch_size], completions[start:start + batch_size]
        rows = [torch.tensor(c + y, dtype=torch.long) for c, y in zip(ctx, comp)]
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_token_id).to(device)
        lengths = torch.tensor([len(r) for r in rows], device=device)
        attn = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).long()  # (b, L) right-padded
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()  # (b, L-1, V)
        targets = ids[:, 1:]  # (b, L-1): position t scores token t+1
        token_logps = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)  # (b, L-1)
        for i, (c, y) in enumerate(zip(ctx, comp)):
            out.append(token_logps[i, len(c) - 1: len(c) - 1 + len(y)].cpu())
    return out


def compute_token_rewards(model, tokenizer, dataset, better_template: str, worse_template: str, *,
                          max_length: int | None = None, batch_size: int = 4, truncation_mode: str = "keep_start",
                          progress: bool = False) -> dict[str, list[list[float]]]:
    """T-REG rewards for every row of a trl-tokenized dataset (``prompt``, ``chosen_ids``, ``rejected_ids``).

    With ``truncation_mode="keep_start"``, tokens past ``max_length - len(prompt_ids)`` (cut by the
    collator anyway) get reward 0 and are not scored; with ``"keep_end"`` the collator keeps the end
    of the sequence, so every completion token is scored. Returns
    ``{"chosen_token_rewards": [...], "rejected_token_rewards": [...]}`` with one list per row, as
    long as that row's ``chosen_ids``/``rejected_ids``. ``progress`` shows a tqdm bar.
    """
    _check_truncation_mode(truncation_mode)
    contexts, completions, spans = [], [], []
    for row in dataset:
        keep = None
        if max_length is not None and truncation_mode == "keep_start":
            keep = max(0, max_length - len(row["prompt_ids"]))
        better = context_ids(tokenizer, row["prompt"], better_template)
        worse = context_ids(tokenizer, row["prompt"], worse_template)
        for col in ("chosen_ids", "rejected_ids"):
            ids = list(row[col])[:keep]
            contexts += [better, worse]
            completions += [ids, ids]
            spans.append(len(row[col]))
    logps = completion_logps(model, contexts, completions, tokenizer.pad_token_id, batch_size, progress=progress)
    rewards = []
    for j, full_len in enumerate(spans):
        r = token_rewards_from_logps(logps[2 * j], logps[2 * j + 1])  # (kept,)
        rewards.append(r.tolist() + [0.0] * (full_len - r.numel()))
    return {COLUMNS[0]: rewards[0::2], COLUMNS[1]: rewards[1::2]}


def reference_model_hash(model, adapter_name: str | None = None) -> str:
    """Content hash of the weights that make the reference: the base weights, plus the LoRA tensors of
    ``adapter_name`` when the reference is that adapter (trl's frozen ``ref`` copy of a loaded adapter).
    Other adapters (the policy being trained) are excluded."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name and (adapter_name is None or f".{adapter_name}." not in name):
            continue
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _dataset_hash(dataset, better: str, worse: str, max_length, model_hash: str, truncation_mode: str) -> str:
    h = hashlib.sha256(json.dumps([better, worse, max_length, model_hash, truncation_mode]).encode())
    for col in ("prompt_ids", "chosen_ids", "rejected_ids", "prompt"):
        h.update(json.dumps(list(dataset[col])).encode())
    return h.hexdigest()[:16]


def cache_path(dataset, cache_dir: str | Path, name: str, *, model_hash: str, better: str, worse: str, max_length,
               truncation_mode: str = "keep_start") -> Path:
    """The reward cache file of ``dataset``: keyed by its token ids, prompts, templates, max_length,
    truncation mode and the reference weights (and nothing else)."""
    key = _dataset_hash(dataset, better, worse, max_length, model_hash, truncation_mode)
    return Path(cache_dir) / f"treg_token_rewards-{name}-{key}.json"


def cached_token_rewards(dataset, cache_dir: str | Path, name: str, compute, *, model_hash: str, better: str,
                         worse: str, max_length, truncation_mode: str = "keep_start") -> tuple:
    """Add the reward columns to ``dataset``, computing them with ``compute()`` only on a cache miss.

    Returns ``(dataset_with_columns, cache_path, was_cached)``. The cache file is written atomically.
    """
    path = cache_path(dataset, cache_dir, name, model_hash=model_hash, better=better, worse=worse,
                      max_length=max_length, truncation_mode=truncation_mode)
    was_cached = path.is_file()
    if was_cached:
        columns = json.loads(path.read_text())
    else:
        columns = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(columns))
        tmp.replace(path)
    for col in COLUMNS:
        if col in dataset.column_names:
            dataset = dataset.remove_columns(col)
        dataset = dataset.add_column(col, columns[col])
    return dataset, path, was_cached


def align_token_rewards(examples: list[dict], width: int, max_length: int | None,
                        truncation_mode: str = "keep_start") -> torch.Tensor:
    """(2B, width) rewards aligned with trl's ``[chosen; rejected]`` ids: 0 on prompt and padding, truncated
    exactly like the ids (``max_length`` with trl's ``truncation_mode``: keep_start keeps the first
    tokens, keep_end the last ones)."""
    _check_truncation_mode(truncation_mode)
    cut = slice(None)
    if max_length is not None:
        cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
    rows = []
    for col in COLUMNS:
        for ex in examples:
            row = ([0.0] * len(ex["prompt_ids"]) + list(ex[col]))[cut]
            rows.append(row + [0.0] * (width - len(row)))
    return torch.tensor(rows, dtype=torch.float32)


@dataclass
class TokenRewardCollator(DataCollatorForPreference):
    """trl's preference collator plus a ``token_rewards`` (2B, L) float tensor aligned with ``input_ids``
    (:func:`align_token_rewards`), or, for lazily computed rewards, the rows' ``treg_rows`` ids (B,)."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if LAZY_ROW in examples[0]:
            out["treg_rows"] = torch.tensor([ex[LAZY_ROW] for ex in examples])
        if COLUMNS[0] in examples[0]:
            out["token_rewards"] = align_token_rewards(examples, out["input_ids"].shape[1], self.max_length,
                                                       self.truncation_mode)
        return out


class LazyTokenRewards:
    """Token rewards of one dataset computed on first use, for the rows a batch needs, and kept on disk.

    ``path`` is the content-keyed cache file (as for the eager precompute) plus ``.lazy[-rankN].json``;
    rows already there (an earlier or interrupted run, any rank) are reused, new ones are appended
    (atomic rewrite). ``compute(rows)`` returns the two reward columns for a list of dataset rows.
    """

    def __init__(self, dataset, path: Path, compute, rank: int | None = None):
        self.dataset, self.compute = dataset, compute
        self.path = path.with_suffix(f".lazy{'' if rank is None else f'-rank{rank}'}.json")
        self.rewards: dict[str, list] = {}
        for f in sorted(path.parent.glob(path.stem + ".lazy*.json")):
            self.rewards.update(json.loads(f.read_text()))
        self.loaded, self.computed, self.seconds = len(self.rewards), 0, 0.0

    def rows(self, indices: list[int]) -> list[dict]:
        """The dataset rows ``indices`` with their two reward columns (computing the missing ones now)."""
        import time

        missing = [i for i in dict.fromkeys(indices) if str(i) not in self.rewards]
        if missing:
            t0 = time.perf_counter()
            cols = self.compute([self.dataset[i] for i in missing])
            for j, i in enumerate(missing):
                self.rewards[str(i)] = [cols[COLUMNS[0]][j], cols[COLUMNS[1]][j]]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.rewards))
            tmp.replace(self.path)
            self.computed += len(missing)
            self.seconds += time.perf_counter() - t0
        return [{**self.dataset[i], COLUMNS[0]: self.rewards[str(i)][0], COLUMNS[1]: self.rewards[str(i)][1]}
                for i in indices]


def reference_adapter(trainer) -> str | None:
    """Name of the adapter that is the reference (trl's frozen ``ref`` copy of a loaded adapter), else None."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.ref_model is None and "ref" in getattr(model, "peft_config", {}):
        return "ref"
    return None


def reference_context(trainer):
    """``(model, context)`` that computes the frozen reference: base weights with the adapter off (or trl's
    ``ref`` adapter when a trained adapter was loaded), or ref_model."""
    from trl.trainer.utils import use_adapter

    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.ref_model is None and hasattr(model, "peft_config"):
        return model, use_adapter(model, adapter_name=reference_adapter(trainer))
    if trainer.ref_model is not None:
        return trainer.accelerator.unwrap_model(trainer.ref_model), contextlib.nullcontext()
    return model, contextlib.nullcontext()  # full fine-tune before step 0: the policy is the reference


def _color(r: float) -> str:
    a = min(1.0, abs(r) / 0.5)
    return f"rgba(0,160,0,{a:.2f})" if r >= 0 else f"rgba(220,0,0,{a:.2f})"


def render_heatmap(examples: list[dict], tokenizer) -> str:
    """An HTML page: each response's tokens shaded green (positive reward) or red (negative).

    ``examples``: dicts with ``prompt`` (text), and for ``chosen``/``rejected`` the token ids
    (``chosen_ids``) and rewards (``chosen_token_rewards``). Hovering a token shows its reward.
    """
    parts = ["<!doctype html><meta charset='utf-8'><title>T-REG token rewards</title>",
             "<style>body{font-family:sans-serif;max-width:60em}span.t{white-space:pre-wrap;border-radius:3px}"
             "pre{white-space:pre-wrap;background:#f4f4f4;padding:.5em}</style>",
             "<h1>T-REG token rewards</h1><p>green = positive reward (the 'better' prompt makes the token more "
             "likely), red = negative; hover for the value.</p>"]
    for n, ex in enumerate(examples, start=1):
        prompt = ex["prompt"] if isinstance(ex["prompt"], str) else json.dumps(ex["prompt"], ensure_ascii=False)
        parts.append(f"<h2>Example {n}</h2><pre>{html.escape(prompt)}</pre>")
        for side in ("chosen", "rejected"):
            ids, rewards = ex[f"{side}_ids"], ex[f"{side}_token_rewards"]
            mean = sum(rewards) / max(1, len(rewards))
            spans = "".join(
                f"<span class='t' title='{r:+.3f}' style='background:{_color(r)}'>"
                f"{html.escape(tokenizer.decode([t]))}</span>" for t, r in zip(ids, rewards))
            parts.append(f"<h3>{side} (mean reward {mean:+.4f})</h3><p>{spans}</p>")
    return "\n".join(parts)
