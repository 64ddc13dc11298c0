"""HyPO samplers: EOS masking, HF generate on the policy, and the vLLM HTTP client against a fake server."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
import torch

from contrastkit.alignment.sampler import HFSampler, VLLMHTTPSampler, completion_mask_until_eos
from contrastkit.errors import UsageError
from contrastkit.testing import JSONRequestHandler, softmax_sampling_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_completion_mask_until_first_eos():
    eos = 2
    comps = torch.tensor([[5, 6, 2, 7, 2],    # EOS at 2: keep 5 6 EOS
                          [2, 5, 5, 5, 5],    # EOS first: keep only it
                          [5, 6, 7, 8, 9],    # no EOS: keep all
                          [5, 2, 0, 0, 0],    # EOS then pad
                          [5, 0, 7, 2, 0]])   # a generated pad id (0) before EOS is a real token
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    assert torch.equal(completion_mask_until_eos(comps, eos), expected)
    lengths = torch.tensor([5, 5, 3, 5, 5])  # row 2 was padded without an EOS after 3 tokens
    expected[2] = torch.tensor([1, 1, 1, 0, 0])
    assert torch.equal(completion_mask_until_eos(comps, eos, lengths), expected)


def test_hf_sampler_shapes_grouping_and_padding(tiny_llama, tiny_tok):
    prompts = [tiny_tok("the cat saw")["input_ids"], tiny_tok("a king")["input_ids"]]
    width = max(map(len, prompts))
    ids = torch.tensor([[tiny_tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (ids != tiny_tok.pad_token_id).long()
    sampler = HFSampler(tiny_tok.pad_token_id, tiny_tok.eos_token_id)
    torch.manual_seed(0)
    out, keep = sampler.sample(tiny_llama, ids, mask, k=3, max_new_tokens=5)
    assert out.shape[0] == 6 and out.shape[1] <= 5 and keep.shape == out.shape
    assert torch.equal(keep, completion_mask_until_eos(out, tiny_tok.eos_token_id))
    assert torch.all(out[keep == 0] == tiny_tok.pad_token_id) and torch.all(keep[:, 0] == 1)
    torch.manual_seed(0)
    assert torch.equal(sampler.sample(tiny_llama, ids, mask, k=3, max_new_tokens=5)[0], out)  # seeded


class _FakeVLLM(JSONRequestHandler):
    requests: list = []

    def do_GET(self):
        self._send({"data": [{"id": "policy"}]})

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(payload)
        n, choices = payload["n"], []
        for i, prompt in enumerate(payload["prompt"]):
            for j in range(n):
                index = i * n + j
                if j == 0:  # server returns token ids
                    choices.append({"index": index, "token_ids": [prompt[-1], 7, 2], "finish_reason": "stop"})
                else:  # older server: text only
                    choices.append({"index": index, "text": " cat", "finish_reason": "stop"})
        self._send({"choices": list(reversed(choices))})  # out of order on purpose


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeVLLM.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_vllm_http_sampler_against_fake_server(fake_server, tiny_tok):
    pad = tiny_tok.pad_token_id
    ids = torch.tensor([[pad, 11, 12], [13, 14, 15]])
    mask = (ids != pad).long()
    sampler = VLLMHTTPSampler(fake_server, tiny_tok)
    out, keep = sampler.sample(None, ids, mask, k=2, max_new_tokens=8)
    req = _FakeVLLM.requests[-1]
    assert req["model"] == "policy" and req["n"] == 2 and req["prompt"] == [[11, 12], [13, 14, 15]]
    cat = tiny_tok(" cat", add_special_tokens=False)["input_ids"] + [tiny_tok.eos_token_id]
    assert out[0, :3].tolist() == [12, 7, 2] and out[2, :3].tolist() == [15, 7, 2]
    assert out[1, : len(cat)].tolist() == cat and out[3, : len(cat)].tolist() == cat
    assert keep.sum(1).tolist() == [3, len(cat), 3, len(cat)]


def test_vllm_http_sampler_unreachable_server_is_usage_error(tiny_tok):
    sampler = VLLMHTTPSampler("http://127.0.0.1:9", tiny_tok, model_name="m", timeout=2)
    with pytest.raises(UsageError, match="did not answer"):
        sampler.sample(None, torch.tensor([[5]]), torch.tensor([[1]]), k=2, max_new_tokens=3)


def test_make_sampler_registry(tiny_tok):
    from contrastkit.alignment.sampler import make_sampler

    assert isinstance(make_sampler("hf", tiny_tok), HFSampler)
    s = make_sampler("vllm-http", tiny_tok, vllm_server_url="http://127.0.0.1:1", accelerator=None)
    assert isinstance(s, VLLMHTTPSampler) and s.base_url == "http://127.0.0.1:1"
    with pytest.raises(UsageError, match="Did you mean 'vllm-http'"):
        make_sampler("vllm_http", tiny_tok)


@pytest.mark.parametrize("peft", [False, True])
def test_hf_sampler_ignores_the_models_generation_config(tiny_tok, peft):
    """A model whose generation_config sets penalties, bans, a min length and top-k still gets samples from
    softmax(logits / T): equal, draw for draw under one seed, to a plain sampling loop."""
    from contrastkit.testing import tiny_llama

    model = tiny_llama(init_range=0.4)
    g = model.generation_config
    g.repetition_penalty, g.no_repeat_ngram_size, g.top_k, g.top_p = 5.0, 1, 3, 0.5
    g.min_new_tokens, g.bad_words_ids, g.temperature = 4, [[9]], 0.3
    g.suppress_tokens = list(range(3, 400))  # an option whose neutral value is None: it must not leak either
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    prompt = tiny_tok("the cat saw")["input_ids"]
    eos, pad, temp = tiny_tok.eos_token_id, tiny_tok.pad_token_id, 1.7
    sampler = HFSampler(pad, eos)
    ids = torch.tensor([prompt])
    torch.manual_seed(11)
    got, keep = sampler.sample(model, ids, torch.ones_like(ids), k=4, max_new_tokens=8, temperature=temp)
    torch.manual_seed(11)
    expected = softmax_sampling_reference(model, prompt, 4, 8, temp, eos, pad)
    assert torch.equal(got, expected)
    assert model.generation_config.repetition_penalty == 5.0  # the model's own config is restored
    # the probe is sharp enough to see the model's config: sampling through it gives other tokens
    torch.manual_seed(11)
    biased = model.generate(input_ids=ids.repeat(4, 1), attention_mask=torch.ones_like(ids).repeat(4, 1),
                            do_sample=True, temperature=temp, max_new_tokens=8, pad_token_id=pad)[:, ids.shape[1]:]
    assert not torch.equal(biased[:, : got.shape[1]], got)
