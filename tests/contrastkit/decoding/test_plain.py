"""greedy / sample / beam: our custom_generate callables against HF's built-in loops."""

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import contrastkit
from contrastkit.decoding import beam, greedy, sample

PROMPTS = ["the cat saw", "once upon a time there lived a king", "red"]


def _batch(tok, prompts=PROMPTS):
    return tok(prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
def test_greedy_equals_hf_greedy_batched(model_fixture, tiny_tok, request):
    model = request.getfixturevalue(model_fixture)
    enc = _batch(tiny_tok)
    ref = model.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    ours = model.generate(**enc, max_new_tokens=12, min_new_tokens=12, custom_generate=greedy)
    assert torch.equal(ref, ours)


def test_greedy_batched_equals_one_by_one(tiny_llama, tiny_tok):
    batched = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "greedy", max_new_tokens=16, min_new_tokens=16)
    for prompt, row in zip(PROMPTS, batched):
        single = contrastkit.generate(tiny_llama, tiny_tok, prompt, "greedy", max_new_tokens=16, min_new_tokens=16)[0]
        assert single.token_ids == row.token_ids and len(row.token_ids) == 16


def test_eos_stops_each_row_and_pads_finished(tiny_llama, tiny_tok):
    class ForceEosAfter(LogitsProcessor):
        """Row 0 must emit EOS at its 3rd new token; other rows are untouched."""

        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores):
            scores = scores.clone()
            if input_ids.shape[1] == self.start + 2:
                scores[0] = -float("inf")
                scores[0, tiny_tok.eos_token_id] = 0.0
            return scores

    enc = _batch(tiny_tok)
    out = tiny_llama.generate(**enc, max_new_tokens=8, custom_generate=greedy,
                              logits_processor=LogitsProcessorList([ForceEosAfter(enc.input_ids.shape[1])]))
    new = out[:, enc.input_ids.shape[1]:]
    assert new[0, 2] == tiny_tok.eos_token_id
    assert (new[0, 3:] == tiny_tok.pad_token_id).all()
    assert new.shape[1] == 8  # the other rows continued


def test_min_new_tokens_suppresses_eos(tiny_llama, tiny_tok):
    res = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "greedy", max_new_tokens=10, min_new_tokens=10)
    assert all(len(r.token_ids) == 10 and tiny_tok.eos_token_id not in r.token_ids for r in res)


def test_sample_seeded_is_reproducible_and_seed_matters(tiny_llama, tiny_tok):
    a = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=12, seed=1)
    b = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=12, seed=1)
    c = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=12, seed=2)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_sample_top_k_1_is_greedy(tiny_llama, tiny_tok):
    s = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=10, top_k=1, seed=3)
    g = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "greedy", max_new_tokens=10)
    assert [r.token_ids for r in s] == [r.token_ids for r in g]


def test_sample_matches_hf_distribution_with_same_rng(tiny_llama, tiny_tok):
    """With the global RNG, our sampling loop draws exactly what HF's _sample draws."""
    enc = _batch(tiny_tok)
    torch.manual_seed(0)
    ref = tiny_llama.generate(**enc, max_new_tokens=10, do_sample=True, top_k=0, top_p=0.9, temperature=0.7)
    torch.manual_seed(0)
    ours = tiny_llama.generate(**enc, max_new_tokens=10, custom_generate=sample, top_p=0.9, temperature=0.7)
    assert torch.equal(ref, ours)


def test_beam_equals_hf_beam(tiny_llama, tiny_tok):
    enc = _batch(tiny_tok)
    ref = tiny_llama.generate(**enc, max_new_tokens=8, num_beams=3, do_sample=False)
    ours = tiny_llama.generate(**enc, max_new_tokens=8, num_beams=3, custom_generate=beam)
    assert torch.equal(ref, ours)
    api = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "beam", num_beams=3, max_new_tokens=8)
    assert api[0].token_ids == ref[0, enc.input_ids.shape[1]:].tolist()[: len(api[0].token_ids)]


def test_beam_search_private_api_is_pinned():
    """beam delegates to GenerationMixin._beam_search; a transformers upgrade that changes it must fail here."""
    import inspect

    from transformers.generation.utils import GenerationMixin

    params = list(inspect.signature(GenerationMixin._beam_search).parameters)
    assert params[:6] == ["self", "input_ids", "logits_processor", "stopping_criteria", "generation_config",
                          "synced_gpus"]


def test_pipeline_with_custom_generate(tiny_llama, tiny_tok):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=tiny_llama, tokenizer=tiny_tok)
    plain = pipe("the cat saw", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    ours = pipe("the cat saw", max_new_tokens=6, custom_generate=greedy)[0]["generated_text"]
    sampled = pipe("the cat saw", max_new_tokens=6, custom_generate=sample, seed=5, top_k=3)[0]["generated_text"]
    again = pipe("the cat saw", max_new_tokens=6, custom_generate=sample, seed=5, top_k=3)[0]["generated_text"]
    assert ours == plain and sampled == again


def test_streamer_receives_prompt_then_every_token(tiny_llama, tiny_tok):
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.tolist())

        def end(self):
            self.ended = True

    streamer = Collect()
    res = contrastkit.generate(tiny_llama, tiny_tok, "the cat saw", "greedy", max_new_tokens=5,
                               min_new_tokens=5, streamer=streamer)[0]
    assert streamer.ended
    streamed = [t for chunk in streamer.chunks[1:] for t in (chunk if isinstance(chunk, list) else [chunk])]
    assert streamed == res.token_ids


@pytest.mark.integration
def test_smollm2_greedy_matches_hf_and_batches(smollm2):
    model, tok = smollm2
    prompts = ["The capital of France is", "Write a haiku about the sea:"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False)
    res = contrastkit.generate(model, tok, prompts, "greedy", max_new_tokens=12)
    for row, r in zip(ref[:, enc.input_ids.shape[1]:].tolist(), res):
        assert r.token_ids == row[: len(r.token_ids)]
    assert "Paris" in res[0].text


def test_sample_matches_hf_with_top_k_top_p_and_repetition_penalty(tiny_llama, tiny_tok):
    """All warpers and a processor at once, on a flattened distribution (T = 2) where top-k cuts real mass:
    HF's order (processors, then temperature, top-k, top-p) draw for draw with the same global RNG."""
    enc = _batch(tiny_tok)
    kw = dict(top_k=6, top_p=0.5, temperature=2.0, repetition_penalty=2.0, max_new_tokens=12)
    for seed in range(3):
        torch.manual_seed(seed)
        ref = tiny_llama.generate(**enc, do_sample=True, **kw)
        torch.manual_seed(seed)
        ours = tiny_llama.generate(**enc, custom_generate=sample, **kw)
        assert torch.equal(ref, ours), seed


def test_sample_defaults_are_no_filter(tiny_llama, tiny_tok):
    """Without top_k the callable and the config apply no top-k (HF's top_k=50 default must not leak in)."""
    import dataclasses

    from contrastkit.decoding.plain import BeamConfig, SampleConfig

    assert dataclasses.astuple(SampleConfig()) == (1.0, 0, 1.0, None)
    assert BeamConfig().num_beams == 4 and BeamConfig().length_penalty == 1.0 and BeamConfig().early_stopping is False
    enc = _batch(tiny_tok)
    torch.manual_seed(0)
    ref = tiny_llama.generate(**enc, do_sample=True, top_k=0, temperature=4.0, max_new_tokens=12)
    torch.manual_seed(0)
    ours = tiny_llama.generate(**enc, custom_generate=sample, temperature=4.0, max_new_tokens=12)
    assert torch.equal(ref, ours)
    a = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=12, temperature=4.0, seed=9)
    b = contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=12, temperature=4.0, seed=9,
                             top_k=0)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_sample_seed_zero_is_a_seed(tiny_llama, tiny_tok):
    """seed=0 seeds the callable's own generator: the global RNG's state does not matter (called straight from
    model.generate, as contrastkit.generate also seeds the global RNG)."""
    enc = _batch(tiny_tok)
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outs.append(tiny_llama.generate(**enc, max_new_tokens=10, custom_generate=sample, temperature=3.0, seed=0))
    assert torch.equal(outs[0], outs[1])


def test_sample_honours_user_logits_processors(tiny_llama, tiny_tok):
    class OnlyToken(LogitsProcessor):
        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, -float("inf"))
            out[:, 7] = 0.0
            return out

    enc = _batch(tiny_tok)
    out = tiny_llama.generate(**enc, max_new_tokens=5, custom_generate=sample, seed=0, temperature=2.0,
                              logits_processor=LogitsProcessorList([OnlyToken()]))
    assert (out[:, enc.input_ids.shape[1]:] == 7).all()


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)])
def test_sample_bad_values_are_usage_errors(tiny_llama, tiny_tok, bad):
    from contrastkit.errors import UsageError

    with pytest.raises(UsageError):
        contrastkit.generate(tiny_llama, tiny_tok, PROMPTS, "sample", max_new_tokens=2, **bad)
    enc = _batch(tiny_tok)
    with pytest.raises(UsageError):  # called straight from model.generate, the callable validates too
        tiny_llama.generate(**enc, max_new_tokens=2, custom_generate=sample, **bad)
