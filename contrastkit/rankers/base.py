"""The ranker interface: ``score(prefixes, continuations) -> (n,)`` fp32 scores, higher = better.

A ranker judges how well a continuation follows a prefix (RankGen, Krishna et al. 2022,
arXiv 2205.09726 section 2). Rankers are registered in :data:`contrastkit.registry.RANKERS`
under their CLI name (``rankgen``, ``embedding``, ``lm``) and built from a spec string by
:func:`get_ranker`::

    get_ranker("embedding")                              # the embedded MiniLM
    get_ranker("rankgen:kalpeshk2011/rankgen-t5-xl-all") # NAME:PATH_OR_HUB_ID
    get_ranker("runs/my-ranker")                         # a directory saved by `contrastkit train ranker`

Decoders call :meth:`Ranker.score_grouped` once per rerank round: ``b`` prefixes, each with
``k`` candidates, scored in one call (dot-product rankers encode each prefix once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from contrastkit.errors import UsageError
from contrastkit.registry import RANKERS

__all__ = ["Ranker", "DotProductRanker", "get_ranker", "ranker_names"]


class Ranker:
    """Base class: subclasses implement :meth:`score`."""

    name = "ranker"

    def score(self, prefixes: Sequence[str], continuations: Sequence[str]) -> torch.Tensor:
        """(n,) fp32 CPU scores of ``continuations[i]`` after ``prefixes[i]``."""
        raise NotImplementedError

    def score_grouped(self, prefixes: Sequence[str], candidates: Sequence[str]) -> torch.Tensor:
        """(b, k) scores: ``candidates`` is the flat list of ``b * k`` continuations, ``k`` per prefix."""
        b = len(prefixes)
        if b == 0 or len(candidates) % b:
            raise ValueError(f"{len(candidates)} candidates do not split evenly over {b} prefixes")
        k = len(candidates) // b
        repeated = [p for p in prefixes for _ in range(k)]
        return self.score(repeated, list(candidates)).view(b, k)

    def __call__(self, prefixes, continuations) -> torch.Tensor:
        return self.score(prefixes, continuations)

    def __deepcopy__(self, memo):
        """Rankers are read-only during decoding: a deep copy (``dataclasses.asdict`` of a config) shares it."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


class DotProductRanker(Ranker):
    """A ranker whose score is the dot product of a prefix vector and a continuation vector."""

    def encode_prefixes(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_continuations(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, prefixes, continuations) -> torch.Tensor:
        if len(prefixes) != len(continuations):
            raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
        p = self.encode_prefixes(list(prefixes)).float()  # (n, d)
        c = self.encode_continuations(list(continuations)).float()  # (n, d)
        return (p * c).sum(-1).cpu()

    def score_grouped(self, prefixes, candidates) -> torch.Tensor:
        b = len(prefixes)
        if b == 0 or len(candidates) % b:
            raise ValueError(f"{len(candidates)} candidates do not split evenly over {b} prefixes")
        p = self.encode_prefixes(list(prefixes)).float()  # (b, d), each prefix encoded once
        c = self.encode_continuations(list(candidates)).float().view(b, len(candidates) // b, -1)  # (b, k, d)
        return torch.einsum("bd,bkd->bk", p, c).cpu()


class _ScoreOnly(Ranker):
    """Adapts an object with only ``score(prefixes, continuations)`` to the full interface."""

    def __init__(self, inner):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)

    def score(self, prefixes, continuations) -> torch.Tensor:
        return torch.as_tensor(self.inner.score(prefixes, continuations), dtype=torch.float32).cpu()


def ranker_names() -> list[str]:
    import contrastkit.rankers  # noqa: F401  (registers the built-ins)

    return RANKERS.names()


def get_ranker(spec="embedding", **kwargs) -> Ranker:
    """Build a ranker from ``spec``: a :class:`Ranker` (returned as is), ``NAME``, ``NAME:PATH`` or a saved ranker dir."""
    if isinstance(spec, Ranker):
        return spec
    if callable(getattr(spec, "score", None)):
        return spec if callable(getattr(spec, "score_grouped", None)) else _ScoreOnly(spec)  # duck-typed ranker
    if not isinstance(spec, str) or not spec:
        raise UsageError(f"ranker must be a name, NAME:PATH or a ranker object, got {spec!r}")
    import contrastkit.rankers  # noqa: F401  (registers the built-ins)

    name, _, path = spec.partition(":")
    if name not in RANKERS and Path(spec).expanduser().is_dir():
        name, path = "rankgen", spec
    factory = RANKERS.get(name)  # unknown names raise with a did-you-mean
    return factory.load(path or None, **kwargs)
