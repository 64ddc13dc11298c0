"""contrastkit.score: the shared-prompt path (one prompt pass, KV cache expanded over the answers)
equals scoring every full sequence on its own, for plain log-probs and the contrastive family."""

import pytest
import torch

import contrastkit
from contrastkit.decoding.contrastive_decoding import bind_tokenizer
from contrastkit.decoding.scoring import encode_pair
from contrastkit.testing import tiny_llama

CONTEXTS = ["Q: the cat was\nA:", "once upon a time there lived a", "red "]
CONTS = [[" red", " a large old dog", " no"], [" king", " queen and a king", " cat"], ["tree", "green river"]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_tok):
    expert = tiny_llama(0, init_range=0.3, num_layers=4)
    bind_tokenizer(expert, tiny_tok)
    return expert, tiny_llama(1, init_range=0.3, num_layers=4)


def flat_scores(res):
    return [c.token_scores for row in res for c in row]


@pytest.mark.parametrize("strategy,params", [
    ("greedy", {}),
    ("icd", {"amateur": True}),
    ("lol", {"amateur": True, "lower_layer": "1,3", "refocus_ids": [9, 10]}),
    ("dola", {"lower_layer": "0,2"}),
])
def test_shared_prompt_equals_full_sequences(models, tiny_tok, strategy, params):
    E, A = models
    if params.get("amateur"):
        params = dict(params, amateur=A)
    shared = contrastkit.score(E, tiny_tok, CONTEXTS, CONTS, strategy, batch_size=2, **params)
    full = contrastkit.score(E, tiny_tok, CONTEXTS, CONTS, strategy, share_prompt=False, batch_size=3, **params)
    for a, b in zip(flat_scores(shared), flat_scores(full)):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=2e-4), (a, b)
    # token ids and order follow the input, one ScoredContinuation per continuation
    for ctx, conts, row in zip(CONTEXTS, CONTS, shared):
        assert [c.token_ids for c in row] == [encode_pair(tiny_tok, ctx, x)[1] for x in conts]


def test_plain_scores_are_log_probs(models, tiny_tok):
    E, _ = models
    res = contrastkit.score(E, tiny_tok, CONTEXTS[0], [" red"], "greedy")[0][0]
    c_ids, x_ids = encode_pair(tiny_tok, CONTEXTS[0], " red")
    logits = E(torch.tensor([c_ids + x_ids])).logits[0].float()
    ref = [torch.log_softmax(logits[len(c_ids) - 1 + t], -1)[x].item() for t, x in enumerate(x_ids)]
    assert torch.allclose(torch.tensor(res.token_scores), torch.tensor(ref), atol=1e-4)
    assert all(s <= 0 for s in res.token_scores)


def test_icd_score_is_expert_minus_amateur(models, tiny_tok):
    E, A = models
    e = flat_scores(contrastkit.score(E, tiny_tok, CONTEXTS, CONTS, "greedy"))
    a = flat_scores(contrastkit.score(A, tiny_tok, CONTEXTS, CONTS, "greedy"))
    icd = flat_scores(contrastkit.score(E, tiny_tok, CONTEXTS, CONTS, "icd", amateur=A))
    for x, y, z in zip(e, a, icd):
        assert torch.allclose(torch.tensor(x) - torch.tensor(y), torch.tensor(z), atol=1e-4)


def _reference_log_probs(model, c_ids, x_ids):
    """Each (context + continuation) sequence on its own, unpadded, default positions 0..T-1."""
    with torch.no_grad():
        logits = model(torch.tensor([c_ids + x_ids])).logits[0].float()
    return [torch.log_softmax(logits[len(c_ids) - 1 + t], -1)[x].item() for t, x in enumerate(x_ids)]


@pytest.mark.parametrize("share_prompt", [False, True])
def test_absolute_position_model_matches_unpadded_reference(tiny_tok, share_prompt):
    """GPT-2 has learned absolute positions, so a left-padded batch or a shared prompt whose tokens sit
    at the wrong positions changes its scores (RoPE models would hide a uniform shift)."""
    from contrastkit.testing import tiny_gpt2

    model = tiny_gpt2(2, init_range=0.3)
    res = contrastkit.score(model, tiny_tok, CONTEXTS, CONTS, "greedy", share_prompt=share_prompt, batch_size=3)
    for ctx, conts, row in zip(CONTEXTS, CONTS, res):
        for cont, got in zip(conts, row):
            c_ids, x_ids = encode_pair(tiny_tok, ctx, cont)
            assert got.token_ids == x_ids
            ref = _reference_log_probs(model, c_ids, x_ids)
            assert torch.allclose(torch.tensor(got.token_scores), torch.tensor(ref), atol=1e-4), (ctx, cont)


def test_encode_pair_moves_trailing_context_space_to_the_continuation(tiny_tok):
    ids = lambda s: tiny_tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx, cont = encode_pair(tiny_tok, "red ", "tree")
    assert ctx == ids("red")
    assert cont == ids("red tree")[len(ids("red")):]
    assert ctx + cont == ids("red tree")
    # two trailing spaces move too
    ctx2, cont2 = encode_pair(tiny_tok, "Q: the cat  ", "x")
    assert ctx2 == ids("Q: the cat") and ctx2 + cont2 == ids("Q: the cat  x")
    # an empty context conditions on BOS
    assert encode_pair(tiny_tok, "", "red tree") == ([tiny_tok.bos_token_id], ids("red tree"))
