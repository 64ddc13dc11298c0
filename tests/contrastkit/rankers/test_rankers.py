"""Rankers: RankGen scoring rule, markers, padding, Hub-format loading, registry; embedding and lm rankers."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFIXES = ["once upon a time there lived a king", "the dog saw the cat", "a red car"]
CONTS = ["he went to the river and saw a ship.", "it ran", "took the old road to the city of the queen"]


def ref_vectors(ref, tok, texts, marker):
    """One text at a time (no padding at all), marker prepended, reference module."""
    out = []
    for t in texts:
        ids = tok(marker + t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out.append(ref(ids, torch.ones_like(ids))[0])
    return torch.stack(out)


def test_score_is_dot_product_of_projected_first_token_states(tiny_rankgen, tiny_tok):
    from contrastkit.rankers import get_ranker

    path, ref = tiny_rankgen
    ranker = get_ranker(f"rankgen:{path}", device="cpu")
    p = ref_vectors(ref, tiny_tok, PREFIXES, "pre ")
    c = ref_vectors(ref, tiny_tok, CONTS, "suffi ")
    expected = (p * c).sum(-1)
    got = ranker.score(PREFIXES, CONTS)  # batched: padding inside the batch
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # raw dot product, not cosine: rescaling is visible
    cos = torch.nn.functional.cosine_similarity(p, c, dim=-1)
    assert not torch.allclose(got, cos, atol=1e-2)
    # grouped scoring (one prefix, many candidates) equals the flat score
    grouped = ranker.score_grouped(PREFIXES[:1], CONTS)
    torch.testing.assert_close(grouped[0], ranker.score(PREFIXES[:1] * 3, CONTS), rtol=1e-5, atol=1e-5)


def test_padding_inside_a_batch_does_not_change_a_score(tiny_rankgen):
    from contrastkit.rankers import get_ranker

    path, _ = tiny_rankgen
    ranker = get_ranker(str(path), device="cpu")  # a bare directory means rankgen
    alone = torch.stack([ranker.score([p], [c])[0] for p, c in zip(PREFIXES, CONTS)])
    torch.testing.assert_close(ranker.score(PREFIXES, CONTS), alone, rtol=1e-5, atol=1e-5)


def test_markers_are_used(tiny_rankgen, tiny_tok):
    from contrastkit.rankers import get_ranker

    path, _ = tiny_rankgen
    ranker = get_ranker(f"rankgen:{path}", device="cpu")
    ids, _ = ranker.tokenize(["the dog"], ranker.meta.prefix_marker, 512)
    assert ids[0].tolist()[:len(tiny_tok("pre the dog")["input_ids"])] == tiny_tok("pre the dog")["input_ids"]
    ids, _ = ranker.tokenize(["the dog"], ranker.meta.suffix_marker, 128)
    assert ids[0].tolist()[:len(tiny_tok("suffi the dog")["input_ids"])] == tiny_tok("suffi the dog")["input_ids"]
    # the same text gives different prefix and continuation vectors
    assert not torch.allclose(ranker.encode_prefixes(["the dog"]), ranker.encode_continuations(["the dog"]))


def test_truncation_keeps_the_first_tokens(tiny_rankgen, tiny_tok):
    from contrastkit.rankers import get_ranker

    path, _ = tiny_rankgen
    ranker = get_ranker(f"rankgen:{path}", device="cpu")
    long = " ".join(["the king went to the city"] * 40)
    ids, mask = ranker.tokenize([long, "a"], "suffi ", 16)
    assert ids.shape[1] == 16 and ids[0].tolist() == tiny_tok("suffi " + long)["input_ids"][:16]
    assert mask[1].sum() < 16  # the short row is padded on the right
    assert ids[1, 0].item() != tiny_tok.pad_token_id


def test_unknown_ranker_name_has_did_you_mean():
    from contrastkit.rankers import get_ranker

    with pytest.raises(UsageError, match="Did you mean 'rankgen'"):
        get_ranker("rankgn:/nowhere")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from contrastkit.rankers import get_ranker

    (tmp_path / "x").mkdir()
    with pytest.raises(UsageError, match="config.json"):
        get_ranker(f"rankgen:{tmp_path / 'x'}")


def test_lm_ranker_is_length_normalised_loglik(tiny_llama, tiny_tok):
    from contrastkit.rankers import LMRanker

    ranker = LMRanker(tiny_llama, tiny_tok, batch_size=2)
    got = ranker.score(PREFIXES, CONTS)  # 3 rows over 2 batches, right padding
    for i, (p, c) in enumerate(zip(PREFIXES, CONTS)):
        pid = tiny_tok(p)["input_ids"]
        cid = tiny_tok(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pid + cid])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama(ids).logits[0].float(), -1)
        total = sum(logp[len(pid) - 1 + t, cid[t]].item() for t in range(len(cid)))
        assert math.isclose(got[i].item(), total / len(cid), rel_tol=1e-4, abs_tol=1e-4)
    assert ranker.score(["a dog"], [""])[0].item() == float("-inf")


def test_embedding_ranker_is_cosine_of_mean_pooled_states(tiny_llama, tiny_tok):
    from contrastkit.rankers import EmbeddingRanker

    body = tiny_llama.model  # any HF encoder-like module with last_hidden_state
    ranker = EmbeddingRanker(body, tiny_tok, batch_size=2)
    got = ranker.score(PREFIXES, CONTS)

    def emb(t):
        ids = torch.tensor([tiny_tok(t)["input_ids"]])
        with torch.no_grad():
            return body(input_ids=ids).last_hidden_state[0].mean(0)

    for i, (p, c) in enumerate(zip(PREFIXES, CONTS)):
        cos = torch.nn.functional.cosine_similarity(emb(p), emb(c), dim=0)
        assert math.isclose(got[i].item(), cos.item(), abs_tol=1e-4)


@pytest.mark.integration
def test_embedding_ranker_default_is_embedded_minilm():
    from contrastkit.rankers import get_ranker

    ranker = get_ranker("embedding", device="cpu")
    s = ranker.score(["The cat sat on the mat."] * 2, ["The cat was sitting on a mat.", "Stock prices fell sharply."])
    assert s[0] > s[1]


def test_rankers_are_shared_not_copied_by_config_records(tiny_llama, tiny_tok):
    """contrastkit.generate records configs with dataclasses.asdict (a deep copy): a ranker holding a model is shared."""
    import copy
    import dataclasses

    from contrastkit.decoding.rankgen import RankGenConfig
    from contrastkit.rankers import LMRanker

    ranker = LMRanker(tiny_llama, tiny_tok)
    assert copy.deepcopy(ranker) is ranker
    assert dataclasses.asdict(RankGenConfig(ranker=ranker))["ranker"] is ranker
