"""Tiny random models and a locally trained tokenizer for fast, offline tests and examples.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in memory on a
synthetic corpus (so decode and stop strings behave like a real tokenizer), and the models are
randomly initialised Llama / GPT-2 configs with a few layers and d=64
(../shared/research/ecosystem.md, "Test fixture used throughout").
"""

from __future__ import annotations

import functools
from http.server import BaseHTTPRequestHandler
from pathlib import Path

CORPUS_WORDS = (
    "the a an of to in and is was for on with as by at from that this it he she they we you "
    "cat dog bird fish tree river city house road car ship king queen war peace time year day night "
    "red green blue small large old new first last good bad true false answer question yes no "
    "once upon there lived went saw said made found came took gave told asked became seemed"
).split()


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with bos/eos/pad, left padding and a chat template."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(2000)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    return fast


def tiny_llama(seed: int = 0, *, vocab_size: int | None = None, num_layers: int = 2, init_range: float = 0.02,
               attn_implementation: str = "sdpa", max_position_embeddings: int = 512):
    """A randomly initialised 2-layer, d=64 Llama on CPU in fp32 (eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=128, vocab_size=vocab_size or len(tok), max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=init_range, tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def tiny_gpt2(seed: int = 0, *, num_layers: int = 2, init_range: float = 0.02, attn_implementation: str = "sdpa"):
    """A randomly initialised 2-layer, d=64 GPT-2 on CPU in fp32 (eval mode)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    cfg = GPT2Config(
        n_embd=64, n_layer=num_layers, n_head=2, n_positions=512, vocab_size=len(tok),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=init_range,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_tiny(path: str | Path, model=None, tokenizer=None) -> Path:
    """Save a tiny model + tokenizer as a local HF directory (what ``load_model(path)`` reads)."""
    path = Path(path)
    model = model if model is not None else tiny_llama()
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class JSONRequestHandler(BaseHTTPRequestHandler):
    """A quiet HTTP request handler that answers JSON: the base of the tests' stand-in servers."""

    def log_message(self, *args):
        pass

    def _send(self, obj, code: int = 200):
        import json

        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def softmax_sampling_reference(model, prompt: list[int], k: int, max_new_tokens: int, temperature: float,
                               eos: int, pad: int):
    """Plain ``softmax(logits / T)`` sampling, written from scratch as a test reference for HyPO's samplers.

    ``k`` copies of ``prompt``; a full forward each step, one multinomial draw per step for the whole
    batch (as HF draws), rows frozen to ``pad`` after their EOS, stop once every row has ended.
    Returns the (k, C) new tokens.
    """
    import torch

    ids = torch.tensor([prompt] * k)
    done = torch.zeros(k, dtype=torch.bool)
    out = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1].float()
        nxt = torch.multinomial(torch.softmax(logits / temperature, -1), num_samples=1).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eos
        if done.all():
            break
    return torch.stack(out, dim=1)


def openai_completions_standin(model, tokenizer):
    """A stand-in for a vLLM OpenAI-compatible server on 127.0.0.1 that serves ``model`` itself.

    It follows vLLM's request semantics: token-id prompts, ``temperature=0`` is greedy,
    ``use_beam_search`` with width ``n`` returns beams best first, ``seed`` per request (sampling
    draws 8 fixed tokens from the seed, so reproducibility is checkable), ``min_tokens``; choices
    come back out of order on purpose. Stop strings are left to the client, as the tests check the
    client's trimming. Returns ``(server, url, requests)``: call ``server.shutdown()`` and
    ``server.server_close()`` when done; ``requests`` collects every completion request body.
    """
    import json
    import threading
    from http.server import ThreadingHTTPServer

    import torch

    requests: list[dict] = []

    class Handler(JSONRequestHandler):
        def do_GET(self):
            assert self.path == "/v1/models"
            self._send({"object": "list", "data": [{"id": "tiny-served"}]})

        def do_POST(self):
            assert self.path == "/v1/completions"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            choices = []
            for i, prompt in enumerate(body["prompt"]):
                assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)  # token-id prompts
                for j, ids in enumerate(_run(prompt, body)):
                    choices.append({"index": i * body["n"] + j, "token_ids": ids, "finish_reason": "stop",
                                    "text": tokenizer.decode(ids, skip_special_tokens=True)})
            self._send({"choices": choices[::-1]})  # out of order on purpose

    def _run(prompt, body):
        ids = torch.tensor([prompt])
        kw = dict(max_new_tokens=body["max_tokens"], min_new_tokens=body["min_tokens"] or None,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  repetition_penalty=body["repetition_penalty"])
        with torch.no_grad():
            if body.get("use_beam_search"):  # vLLM's BeamSearchParams: width, length penalty, nothing else
                kw.update(min_new_tokens=None, repetition_penalty=1.0)
                out = model.generate(ids, num_beams=body["n"], num_return_sequences=body["n"], do_sample=False,
                                     length_penalty=body["length_penalty"], **kw)
            elif body["temperature"] == 0:
                out = model.generate(ids, do_sample=False, **kw)
            else:
                g = torch.Generator().manual_seed(body["seed"])
                nxt = torch.multinomial(torch.ones(8), body["max_tokens"], replacement=True, generator=g) + 10
                return [nxt.tolist()]
        return [row[len(prompt):].tolist() for row in out]

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", requests
