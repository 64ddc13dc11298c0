"""RankGen training pieces: the InfoNCE objective, pair cutting, in-book batches, held-out accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.rankers.data import Pair, documents_from_text, inbook_batches, make_pairs, split_sentences

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_infonce_no_temperature_with_generative_negatives():
    from contrastkit.rankers.train import infonce_loss

    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    g = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    # row 0: dots with c = [3, 1], with g = [0, 2]; row 1: c = [0, 2], g = [2, 0]
    l0 = -(3 - math.log(math.exp(3) + math.exp(1) + math.exp(0) + math.exp(2)))
    l1 = -(2 - math.log(math.exp(0) + math.exp(2) + math.exp(2) + math.exp(0)))
    assert infonce_loss(p, c, g).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    l0c = -(3 - math.log(math.exp(3) + math.exp(1)))
    l1c = -(2 - math.log(math.exp(0) + math.exp(2)))
    assert infonce_loss(p, c).item() == pytest.approx((l0c + l1c) / 2, rel=1e-6)


def test_pairs_are_cut_at_sentence_boundaries():
    sents = [f"Sentence {i} has " + " ".join(["word"] * (i % 4 + 2)) + "." for i in range(30)]
    text = " ".join(sents)
    pairs = make_pairs(0, text, prefix_words=20, min_continuation_words=5, max_continuation_words=12)
    assert len(pairs) >= 3
    for p in pairs:
        assert p.prefix.endswith(".") and p.continuation.endswith(".")
        assert len(p.prefix.split()) >= 20
        assert 5 <= len(p.continuation.split()) <= 12
        assert p.prefix + " " + p.continuation in text  # contiguous: the continuation follows its prefix
    # non-overlapping and in order
    joined = " ".join(p.prefix + " " + p.continuation for p in pairs)
    assert joined in text
    assert split_sentences("A b. C d! E f? g") == ["A b.", "C d!", "E f?", "g"]


def test_wikitext_documents_split_at_titles():
    raw = " = A = \n text one . \n = = Sec = = \n more one . \n = B = \n text two . \n"
    assert documents_from_text(raw) == ["text one . more one .", "text two ."]


def test_inbook_batches_come_from_one_document():
    pairs = [Pair(d, f"p{d}{i}", f"c{d}{i}") for d, n in ((0, 5), (1, 1), (2, 3)) for i in range(n)]
    batches = inbook_batches(pairs, 2)
    assert batches == [[0, 1], [2, 3], [6, 7]]  # doc 0's last single pair and doc 1's lone pair are dropped
    assert all(len({pairs[i].doc for i in b}) == 1 for b in batches)


class FixedVectors:
    """A ranker whose vectors come from a table, to hand-check the accuracy rule."""

    def __init__(self, table):
        self.table = table
        self.module = torch.nn.Linear(1, 1)

    def encode_prefixes(self, texts):
        return torch.stack([self.table[t] for t in texts])

    encode_continuations = encode_prefixes


def test_heldout_accuracy_counts_strict_wins_over_inbook_and_own_generated():
    from contrastkit.rankers.train import heldout_accuracy

    e = torch.eye(3)
    table = {"p0": e[0], "p1": e[1], "c0": 2 * e[0], "c1": e[1] + e[0], "g0": e[0] + e[2], "g1": 2 * e[1] + 3 * e[0],
             "g_other": torch.zeros(3)}
    held = [Pair(0, "p0", "c0"), Pair(0, "p1", "c1")]
    negs = {"p0": "g0", "p1": "g1"}
    # p0: gold 2, in-book c1 -> 1, own gen g0 -> 1 (g1 -> 3 is p1's, not its negative) -> win
    # p1: gold 1, in-book c0 -> 0, own gen g1 -> 2 -> loss
    assert heldout_accuracy(FixedVectors(table), held, negs, 8) == 0.5
    # without generated negatives, p1 wins too; a tie is not a win
    assert heldout_accuracy(FixedVectors(table), held, {}, 8) == 1.0
    table["c1"] = e[1] * 0 + e[0] * 0 + torch.tensor([0.0, 0.0, 0.0])  # p1 gold 0 vs c0 0: tie -> loss
    assert heldout_accuracy(FixedVectors(table), held, {}, 8) == 0.5


def test_train_step_loss_uses_inbook_and_generated_negatives(tiny_tok):
    """The trainer's step computes InfoNCE over the batch's golds and the batch's generated negatives."""
    from transformers import BertConfig, BertModel

    from contrastkit.rankers.rankgen import RankGenEncoder, RankGenMeta, RankGenRanker
    from contrastkit.rankers.trainer import _step

    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=len(tiny_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128)).eval()
    ranker = RankGenRanker(RankGenEncoder(enc), tiny_tok, RankGenMeta(pooling="first"), device="cpu")
    pairs = [Pair(0, "the king went", "to the city."), Pair(0, "a dog saw", "the red bird."),
             Pair(0, "once upon a time", "there lived a queen.")]
    negs = {"the king went": "fish fish.", "a dog saw": "war war war.", "once upon a time": "yes no."}
    P = ranker.encode_prefixes([p.prefix for p in pairs])
    C = ranker.encode_continuations([p.continuation for p in pairs])
    G = ranker.encode_continuations([negs[p.prefix] for p in pairs])
    S = torch.cat([P @ C.T, P @ G.T], dim=1)  # (3, 6)
    expected = -(S.diag()[:3] - torch.logsumexp(S, dim=1)).mean()
    opt = torch.optim.SGD(ranker.module.parameters(), lr=0.0)
    assert _step(ranker, opt, pairs, [0, 1, 2], negs) == pytest.approx(expected.item(), rel=1e-4)
    S2 = P @ C.T
    expected_inbook = -(S2.diag() - torch.logsumexp(S2, dim=1)).mean()
    assert _step(ranker, opt, pairs, [0, 1, 2], {}) == pytest.approx(expected_inbook.item(), rel=1e-4)
