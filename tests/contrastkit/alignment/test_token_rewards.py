"""T-REG token rewards: alignment with trl's token ids, the swap invariant, the cache and the heatmap."""

from __future__ import annotations

import pytest
import torch

datasets = pytest.importorskip("datasets")

from contrastkit.alignment.token_rewards import (  # noqa: E402
    TokenRewardCollator,
    cached_token_rewards,
    completion_logps,
    compute_token_rewards,
    context_ids,
    render_heatmap,
    tokenize_pairs,
)

BETTER, WORSE = "Answer well.\n{prompt}", "Answer badly.\n{prompt}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(tok, n=3):
    data = [{"prompt": "the cat saw", "chosen": " a red bird.", "rejected": " the king"},
            {"prompt": "a queen went to", "chosen": " the river city.", "rejected": " dog"},
            {"prompt": "once upon a time", "chosen": " there lived a king.", "rejected": " no"}][:n]
    return tokenize_pairs(datasets.Dataset.from_list(data), tok)


def test_tokenize_pairs_matches_trl_split(tiny_tok):
    r = rows(tiny_tok)[0]
    full = tiny_tok("the cat saw a red bird." + tiny_tok.eos_token)["input_ids"]
    assert r["prompt_ids"] + r["chosen_ids"] == full and r["chosen_ids"][-1] == tiny_tok.eos_token_id


def test_completion_logps_equals_unbatched_full_forward(tiny_llama, tiny_tok):
    ctx = [context_ids(tiny_tok, "the cat", BETTER), context_ids(tiny_tok, "a dog saw the", WORSE)]
    comp = [[5, 9, 2], [7, 2]]
    got = completion_logps(tiny_llama, ctx, comp, tiny_tok.pad_token_id, batch_size=2)
    for c, y, g in zip(ctx, comp, got):  # slow reference: one sequence, full log_softmax
        ids = torch.tensor([c + y])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama(ids).logits[0].float(), -1)
        expected = torch.stack([logp[len(c) - 1 + t, tok] for t, tok in enumerate(y)])
        torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-5)


def test_swapping_prompts_negates_every_reward(tiny_llama, tiny_tok):
    data = rows(tiny_tok)
    fwd = compute_token_rewards(tiny_llama, tiny_tok, data, BETTER, WORSE)
    rev = compute_token_rewards(tiny_llama, tiny_tok, data, WORSE, BETTER)
    for col in fwd:
        for a, b in zip(fwd[col], rev[col]):
            assert a == [-x for x in b]
    assert all(len(r) == len(d["chosen_ids"]) for r, d in zip(fwd["chosen_token_rewards"], data))
    assert any(x != 0 for r in fwd["chosen_token_rewards"] for x in r)
    same = compute_token_rewards(tiny_llama, tiny_tok, data, BETTER, BETTER)  # identical prompts: all zero
    assert all(x == 0 for r in same["chosen_token_rewards"] for x in r)


def test_max_length_truncation_zeroes_cut_tokens(tiny_llama, tiny_tok):
    data = rows(tiny_tok, 1)
    cap = len(data[0]["prompt_ids"]) + 2
    out = compute_token_rewards(tiny_llama, tiny_tok, data, BETTER, WORSE, max_length=cap)
    full = compute_token_rewards(tiny_llama, tiny_tok, data, BETTER, WORSE)
    r, f = out["chosen_token_rewards"][0], full["chosen_token_rewards"][0]
    assert r[:2] == pytest.approx(f[:2], abs=1e-6) and all(x == 0 for x in r[2:])


def test_cache_is_reused_and_keyed_by_templates(tmp_path, tiny_tok):
    ds = datasets.Dataset.from_list(rows(tiny_tok))
    calls = []

    def compute():
        calls.append(1)
        return {"chosen_token_rewards": [[0.1] * len(r) for r in ds["chosen_ids"]],
                "rejected_token_rewards": [[-0.1] * len(r) for r in ds["rejected_ids"]]}

    kw = dict(model_hash="m", better=BETTER, worse=WORSE, max_length=64)
    a, path, cached = cached_token_rewards(ds, tmp_path, "train", compute, **kw)
    b, path2, cached2 = cached_token_rewards(ds, tmp_path, "train", compute, **kw)
    assert (cached, cached2, len(calls), path == path2) == (False, True, 1, True)
    assert a["chosen_token_rewards"] == b["chosen_token_rewards"]
    cached_token_rewards(ds, tmp_path, "train", compute, **{**kw, "better": WORSE})
    assert len(calls) == 2  # different template -> different key


def test_collator_aligns_rewards_with_completion_mask(tiny_tok):
    ex = [{"prompt_ids": [1, 5, 6], "chosen_ids": [7, 2], "rejected_ids": [9],
           "chosen_token_rewards": [0.25, -0.5], "rejected_token_rewards": [0.125]},
          {"prompt_ids": [1, 5], "chosen_ids": [8], "rejected_ids": [9, 9, 2],
           "chosen_token_rewards": [0.5], "rejected_token_rewards": [0.1, 0.2, 0.3]}]
    out = TokenRewardCollator(pad_token_id=0, max_length=4)(ex)
    torch.testing.assert_close(out["token_rewards"], torch.tensor([
        [0, 0, 0, 0.25], [0, 0, 0.5, 0], [0, 0, 0, 0.125], [0, 0, 0.1, 0.2]]))
    assert torch.equal(out["token_rewards"] != 0, out["completion_mask"].bool())


def test_heatmap_html(tiny_tok):
    r = rows(tiny_tok, 1)[0]
    r["chosen_token_rewards"] = [0.3] * len(r["chosen_ids"])
    r["rejected_token_rewards"] = [-0.2] * len(r["rejected_ids"])
    page = render_heatmap([r], tiny_tok)
    assert page.startswith("<!doctype html>") and "title='+0.300'" in page and "title='-0.200'" in page
    assert "rgba(0,160,0" in page and "rgba(220,0,0" in page


def test_chat_rows_wrap_last_user_message(tiny_llama, tiny_tok):
    data = datasets.Dataset.from_list([{
        "prompt": [{"role": "user", "content": "the cat saw"}],
        "chosen": [{"role": "assistant", "content": "a red bird."}],
        "rejected": [{"role": "assistant", "content": "no"}]}])
    row = tokenize_pairs(data, tiny_tok)[0]
    rendered = tiny_tok.apply_chat_template([*data[0]["prompt"], *data[0]["chosen"]], tokenize=True,
                                            return_dict=True)["input_ids"]
    assert row["prompt_ids"] + row["chosen_ids"] == list(rendered)
    better = tiny_tok.decode(context_ids(tiny_tok, data[0]["prompt"], BETTER))
    assert "user: Answer well.\nthe cat saw" in better and better.endswith("assistant:")
    fwd = compute_token_rewards(tiny_llama, tiny_tok, [row], BETTER, WORSE)
    rev = compute_token_rewards(tiny_llama, tiny_tok, [row], WORSE, BETTER)
    assert fwd["chosen_token_rewards"][0] == [-x for x in rev["chosen_token_rewards"][0]]
