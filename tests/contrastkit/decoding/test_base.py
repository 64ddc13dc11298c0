"""base.py: the strategy record (configs, generate kwargs, registration) and the shared loop pieces, each on
hand-built inputs, plus the greedy loop against a slow no-cache reference written here."""

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

import contrastkit
from contrastkit.decoding import greedy
from contrastkit.decoding.base import (
    DecodingStrategy,
    finish,
    get_strategy,
    grow_mask,
    keep_finished_padded,
    prefill_positions,
)
from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prefill_positions_follow_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert prefill_positions(torch.zeros(3, 5, dtype=torch.long), mask).tolist() == [
        [0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
    assert prefill_positions(torch.zeros(2, 3, dtype=torch.long), None).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_grow_mask_and_keep_finished_padded():
    m = torch.tensor([[0, 1], [1, 1]])
    assert grow_mask(m).tolist() == [[0, 1, 1], [1, 1, 1]] and grow_mask(None) is None
    gc = SimpleNamespace(_pad_token_tensor=torch.tensor(0))
    nxt, live = torch.tensor([5, 6, 7]), torch.tensor([True, False, True])
    assert keep_finished_padded(nxt, live, gc).tolist() == [5, 0, 7]
    assert keep_finished_padded(nxt, live, SimpleNamespace(_pad_token_tensor=None)).tolist() == [5, 6, 7]


def test_finish_returns_an_output_object_when_asked_and_ends_the_streamer():
    seq = torch.tensor([[1, 2, 3]])

    class Streamer:
        ended = False

        def end(self):
            self.ended = True

    s = Streamer()
    out = finish(SimpleNamespace(return_dict_in_generate=True), seq, cache="c", token_streamer=s)
    assert isinstance(out, GenerateDecoderOnlyOutput) and out.sequences is seq and s.ended
    assert finish(SimpleNamespace(return_dict_in_generate=False), seq) is seq


def test_greedy_through_generate_honours_return_dict(tiny_llama, tiny_tok):
    enc = tiny_tok(["the cat saw", "red"], return_tensors="pt", padding=True)
    plain = tiny_llama.generate(**enc, max_new_tokens=4, custom_generate=greedy)
    out = tiny_llama.generate(**enc, max_new_tokens=4, custom_generate=greedy, return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain)


def slow_greedy(model, prompt, n, eos):
    """Greedy from scratch: one unpadded sequence, a full forward every step, no cache, EOS banned (min_new_tokens)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            logits[eos] = -float("inf")
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama"])
def test_token_loop_left_padded_batch_equals_slow_reference(model_fixture, tiny_tok, request):
    """GPT-2 has absolute positions, so a position off by one (prefill or decode) changes its tokens."""
    model = request.getfixturevalue(model_fixture)
    prompts = ["once upon a time there lived a king", "red", "the cat saw"]
    res = contrastkit.generate(model, tiny_tok, prompts, "greedy", max_new_tokens=8, min_new_tokens=8)
    for p, r in zip(prompts, res):
        assert r.token_ids == slow_greedy(model, tiny_tok(p)["input_ids"], 8, tiny_tok.eos_token_id), p


@dataclass
class _Cfg:
    a: int = field(default=1, metadata={"help": "an int"})
    items: list = field(default_factory=lambda: [1, 2], metadata={"help": "a list"})


def _fn(model, input_ids, logits_processor, stopping_criteria, generation_config, a=1, token_streamer=None, **kw):
    return input_ids


def test_strategy_record_config_kwargs_and_parameters():
    obj = object()
    plain = DecodingStrategy("x", _Cfg, _fn, "summary")
    assert plain.make_config(a=3) == _Cfg(a=3)
    with pytest.raises(UsageError, match="has no parameter 'b'"):
        plain.make_config(b=3)
    assert plain.generate_kwargs(_Cfg(a=2)) == {"custom_generate": _fn, "a": 2, "items": [1, 2]}
    mapped = DecodingStrategy("y", _Cfg, _fn, "summary", hf_kwargs=lambda c: {"a": c.a, "obj": obj})
    kw = mapped.generate_kwargs(_Cfg(a=5))
    assert kw == {"custom_generate": _fn, "a": 5, "obj": obj} and kw["obj"] is obj  # the mapping, not asdict
    assert plain.streams
    assert [(n, d, h) for n, _, d, h in plain.parameters()] == [("a", 1, "an int"), ("items", [1, 2], "a list")]
    assert dataclasses.fields(_Cfg)[1].default is dataclasses.MISSING


def test_registered_strategies_keep_their_scorer_hf_kwargs_and_defaults():
    from contrastkit.decoding.rankgen import _plain_kwargs

    for name in ("cd", "icd", "dola", "lol"):
        assert get_strategy(name).scorer is not None, name
    assert get_strategy("greedy").scorer is None
    assert get_strategy("rankgen").hf_kwargs is _plain_kwargs
    assert get_strategy("dola").generate_defaults == {"repetition_penalty": 1.2}
    assert get_strategy("greedy").generate_defaults == {}
    assert get_strategy("greedy").custom_generate.strategy_name == "greedy"
