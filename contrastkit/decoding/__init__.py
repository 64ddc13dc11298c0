"""Decoding strategies as plugins (registry key = CLI name).

Importing this package registers the built-in strategies. Each strategy's ``custom_generate``
callable is importable directly and plugs into ``model.generate(custom_generate=...)``,
``pipeline("text-generation")(..., custom_generate=...)`` and the contrastkit CLI.
"""

from contrastkit.decoding.base import DecodingStrategy, get_strategy, register_strategy
from contrastkit.decoding.contrastive_decoding import cd, dola, icd, lol  # noqa: F401  (registers cd/icd/dola/lol)
from contrastkit.decoding.contrastive_search import contrastive_search
from contrastkit.decoding.plain import beam, greedy, sample
from contrastkit.decoding.rankgen import rankgen  # noqa: F401  (registers rankgen)

__all__ = ["DecodingStrategy", "get_strategy", "register_strategy", "greedy", "sample", "beam", "contrastive_search"]
