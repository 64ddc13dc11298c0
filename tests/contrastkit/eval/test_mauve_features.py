"""MAUVE featurizers against from-scratch references: pooling, normalisation, layer, truncation, scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.errors import UsageError
from contrastkit.eval.mauve_features import compute_mauve, make_featurizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["the cat saw a dog", "red", "once upon a time there lived a king and a queen"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from contrastkit.testing import save_tiny, tiny_gpt2, tiny_tokenizer

    return save_tiny(tmp_path_factory.mktemp("dec") / "tiny-gpt2", tiny_gpt2(0, init_range=0.3), tiny_tokenizer())


def test_encoder_directory_is_mean_pooled_and_unit_norm(bert_dir):
    from transformers import AutoModel, AutoTokenizer

    feats = make_featurizer(str(bert_dir), batch_size=2)(TEXTS)
    model, tok = AutoModel.from_pretrained(bert_dir).eval(), AutoTokenizer.from_pretrained(bert_dir)
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]  # (T, d), no padding
        v = h.mean(0)
        np.testing.assert_allclose(feats[i], (v / v.norm()).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_gpt2_directory_is_last_token_unnormalised(gpt2_dir):
    from transformers import AutoModel, AutoTokenizer

    f = make_featurizer(str(gpt2_dir), batch_size=1)  # one text per batch: GPT-2's absolute positions and padding
    assert f.pooling == "last" and not f.normalize
    feats = f(TEXTS)
    model, tok = AutoModel.from_pretrained(gpt2_dir).eval(), AutoTokenizer.from_pretrained(gpt2_dir)
    for i, text in enumerate(TEXTS):
        with torch.no_grad():
            h = model(**tok(text, return_tensors="pt")).last_hidden_state[0, -1]
        np.testing.assert_allclose(feats[i], h.numpy(), atol=1e-4)


def test_self_featurizer_last_layer_last_token_and_truncation(tiny_llama, tiny_tok):
    f = make_featurizer("self", model=tiny_llama, tokenizer=tiny_tok, batch_size=2, max_length=4)
    assert f.pooling == "last" and not f.normalize and f.max_length == 4
    feats = f(TEXTS)
    for i, text in enumerate(TEXTS):
        ids = tiny_tok(text, add_special_tokens=False)["input_ids"][:4]
        with torch.no_grad():
            h = tiny_llama.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        np.testing.assert_allclose(feats[i], h.numpy(), atol=1e-4)
    assert len(tiny_tok(TEXTS[2], add_special_tokens=False)["input_ids"]) > 4  # truncation mattered
    mean = make_featurizer("self", model=tiny_llama, tokenizer=tiny_tok, pooling="mean")(TEXTS[:1])
    ids = tiny_tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = tiny_llama.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    np.testing.assert_allclose(mean[0], h.mean(0).numpy(), atol=1e-4)
    with pytest.raises(UsageError):
        make_featurizer("self")


def test_compute_mauve_forwards_scaling_and_seed():
    mauve = pytest.importorskip("mauve")
    rng = np.random.default_rng(1)
    p = rng.normal(size=(40, 6)).astype(np.float32)
    q = (rng.normal(size=(40, 6)) + 0.7).astype(np.float32)
    got = {c: compute_mauve(p, q, scaling=c, num_buckets=5) for c in (1.0, 5.0)}
    for c, res in got.items():
        ref = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=5, mauve_scaling_factor=c, seed=25,
                                  verbose=False, device_id=-1)
        assert res["mauve"] == pytest.approx(float(ref.mauve), abs=1e-9) and res["mauve_buckets"] == 5
    assert abs(got[1.0]["mauve"] - got[5.0]["mauve"]) > 1e-3
    seeded = compute_mauve(p, q, seed=3, num_buckets=5)
    ref = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=5, seed=3, verbose=False, device_id=-1)
    assert seeded["mauve"] == pytest.approx(float(ref.mauve), abs=1e-9)
    assert seeded["frontier_integral"] == pytest.approx(float(ref.frontier_integral), abs=1e-9)
    with pytest.raises(UsageError):
        compute_mauve(p[:1], q)


def test_empty_text_is_featurized_as_a_space(tiny_llama, tiny_tok):
    f = make_featurizer("self", model=tiny_llama, tokenizer=tiny_tok, batch_size=3)
    feats = f(["", "the cat saw a dog", "  "])
    space = f([" "])[0]
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], space, atol=1e-4)
    np.testing.assert_allclose(feats[2], space, atol=1e-4)


def test_gpt2_features_do_not_depend_on_the_batch(tmp_path):
    """Absolute positions (GPT-2): a left-padded text gets the features it gets alone (positions from the mask)."""
    import numpy as np

    from contrastkit.eval.mauve_features import make_featurizer
    from contrastkit.testing import save_tiny, tiny_gpt2, tiny_tokenizer

    d = save_tiny(tmp_path / "g", tiny_gpt2(0, init_range=0.3), tiny_tokenizer())
    texts = ["the cat saw a dog", "red", "once upon a time there lived a king and a queen"]
    alone, together = make_featurizer(str(d), batch_size=1)(texts), make_featurizer(str(d), batch_size=3)(texts)
    assert np.abs(alone - together).max() < 1e-4
