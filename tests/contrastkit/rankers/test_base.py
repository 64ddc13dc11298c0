"""The ranker interface: grouped scoring, duck-typed rankers and get_ranker's spec handling."""

from __future__ import annotations

import pytest
import torch

from contrastkit.errors import UsageError
from contrastkit.rankers.base import DotProductRanker, Ranker, get_ranker


class LengthScorer:
    """score = 10 * len(prefix) + len(continuation), as float64 (a duck ranker with score only)."""

    name = "lengths"

    def __init__(self):
        self.calls = []

    def score(self, prefixes, continuations):
        self.calls.append((list(prefixes), list(continuations)))
        return torch.tensor([10.0 * len(p) + len(c) for p, c in zip(prefixes, continuations)], dtype=torch.float64)


class TableRanker(DotProductRanker):
    def __init__(self, table):
        self.table = table

    def encode_prefixes(self, texts):
        return torch.stack([self.table[t] for t in texts])

    encode_continuations = encode_prefixes


def test_score_only_object_gets_grouped_scoring_in_fp32():
    inner = LengthScorer()
    ranker = get_ranker(inner)
    assert isinstance(ranker, Ranker) and ranker.name == "lengths"
    s = ranker.score(["ab"], ["xyz"])
    assert s.dtype == torch.float32 and s.tolist() == [23.0]
    g = ranker.score_grouped(["a", "bbb"], ["x", "yy", "zzz", "w", "vv", "uuu"])  # b=2, k=3
    assert g.shape == (2, 3) and g.dtype == torch.float32
    assert g.tolist() == [[11.0, 12.0, 13.0], [31.0, 32.0, 33.0]]
    assert inner.calls[-1][0] == ["a", "a", "a", "bbb", "bbb", "bbb"]  # each prefix repeated k times, in order
    assert ranker(["ab"], ["q"]).tolist() == [21.0]


@pytest.mark.parametrize("prefixes, n", [(["a", "b"], 3), ([], 2), (["a", "b", "c"], 4)])
def test_uneven_groups_are_refused(prefixes, n):
    for ranker in (get_ranker(LengthScorer()), TableRanker({})):
        with pytest.raises(ValueError, match="do not split evenly"):
            ranker.score_grouped(prefixes, ["c"] * n)


def test_dot_product_grouped_equals_pairwise_scores():
    g = torch.Generator().manual_seed(0)
    names = ["p0", "p1", "c0", "c1", "c2", "c3", "c4", "c5"]
    table = {n: torch.randn(4, generator=g) for n in names}
    ranker = TableRanker(table)
    cands = ["c0", "c1", "c2", "c3", "c4", "c5"]
    grouped = ranker.score_grouped(["p0", "p1"], cands)  # (2, 3)
    want = torch.tensor([[float(table[p] @ table[c]) for c in cands[3 * i:3 * i + 3]] for i, p in enumerate(["p0", "p1"])])
    torch.testing.assert_close(grouped, want)
    flat = ranker.score(["p0", "p0", "p1"], ["c0", "c4", "c5"])
    torch.testing.assert_close(flat, torch.stack([table["p0"] @ table["c0"], table["p0"] @ table["c4"],
                                                  table["p1"] @ table["c5"]]))
    with pytest.raises(ValueError):
        ranker.score(["p0"], ["c0", "c1"])


def test_get_ranker_passes_full_rankers_through_and_refuses_junk():
    r = TableRanker({})
    assert get_ranker(r) is r

    class Full:
        def score(self, p, c):
            return torch.zeros(len(p))

        def score_grouped(self, p, c):
            return torch.zeros(len(p), len(c) // len(p))

    full = Full()
    assert get_ranker(full) is full
    for bad in ("", 3, None):
        with pytest.raises(UsageError):
            get_ranker(bad)
