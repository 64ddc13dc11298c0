"""RankGen-style rankers (arXiv 2205.09726) and their contrastive training.

Importing this package registers the built-in rankers under their CLI names in
:data:`contrastkit.registry.RANKERS`: ``rankgen`` (T5/any encoder + bias-free projection),
``embedding`` (cosine of sentence embeddings, default the embedded MiniLM) and ``lm``
(length-normalised continuation log-likelihood under a causal LM).
"""

from contrastkit.rankers.base import DotProductRanker, Ranker, get_ranker, ranker_names
from contrastkit.rankers.embedding import EmbeddingRanker
from contrastkit.rankers.lm import LMRanker
from contrastkit.rankers.rankgen import RankGenEncoder, RankGenMeta, RankGenRanker

__all__ = ["Ranker", "DotProductRanker", "get_ranker", "ranker_names", "RankGenRanker", "RankGenEncoder",
           "RankGenMeta", "EmbeddingRanker", "LMRanker"]
