"""``lm`` ranker: length-normalised log-likelihood of the continuation under a causal LM.

The "re-rank by LM perplexity" baseline of RankGen (arXiv 2205.09726, Table 3): score =
(1/|c|) Σ_t log p(c_t | prefix, c_<t), i.e. minus the log-perplexity of the continuation.
The prefix is tokenized with the tokenizer's special tokens (BOS), the continuation without,
and the two id lists are concatenated (no text re-joining). An empty continuation scores -inf.
The model comes through :func:`contrastkit.models.load_model` (default: the embedded SmolLM2).
"""

from __future__ import annotations

import torch

from contrastkit.rankers.base import Ranker
from contrastkit.registry import register_ranker


class LMRanker(Ranker):
    """Mean per-token log-prob of the continuation given the prefix (one forward per batch)."""

    name = "lm"

    def __init__(self, model, tokenizer, *, batch_size: int = 16, max_prefix_tokens: int = 1024):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.batch_size, self.max_prefix_tokens = batch_size, max_prefix_tokens

    def _batch(self, prefixes: list[str], continuations: list[str]) -> torch.Tensor:
        pre = self.tokenizer(prefixes, add_special_tokens=True)["input_ids"]
        cont = self.tokenizer(continuations, add_special_tokens=False)["input_ids"]
        rows = [p[-self.max_prefix_tokens:] + c for p, c in zip(pre, cont)]
        T = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        target = torch.zeros(len(rows), T, dtype=torch.bool)  # positions holding continuation tokens
        for i, (p, c) in enumerate(zip(pre, cont)):  # right padding, built once per batch
            n_p = min(len(p), self.max_prefix_tokens)
            ids[i, :n_p + len(c)] = torch.tensor(rows[i])
            mask[i, :n_p + len(c)] = 1
            target[i, n_p:n_p + len(c)] = True
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()  # (n, T-1, V) predicts position t+1
        tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (n, T-1)
        tmask = target[:, 1:]
        n = tmask.sum(-1)
        total = (tok_lp * tmask).sum(-1)
        return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, float("-inf")))

    def score(self, prefixes, continuations) -> torch.Tensor:
        if len(prefixes) != len(continuations):
            raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
        out = [self._batch(list(prefixes[i:i + self.batch_size]), list(continuations[i:i + self.batch_size]))
               for i in range(0, len(prefixes), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    @classmethod
    def load(cls, path: str | None = None, *, device: str | None = None, **kwargs):
        from contrastkit.models import load_model

        model, tok = load_model(path or "smollm2", device=device)
        return cls(model, tok, **kwargs)


register_ranker("lm")(LMRanker)
