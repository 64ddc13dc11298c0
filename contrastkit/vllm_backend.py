"""Plain strategies (greedy, sample, beam) on a vLLM server: ``contrastkit generate --backend vllm``.

Requests go to vLLM's OpenAI-compatible ``POST {url}/v1/completions`` with token-id prompts
(the prompt is encoded here, exactly as the HF path encodes it, so both backends see the same
tokens), over the standard library's HTTP client; vLLM itself is never imported. The records
are :class:`contrastkit.generation.GenerationResult` with the HF path's fields, plus
``backend``/``vllm_url``/``seed`` in ``extra``.

Mapping (vLLM sampling parameters): greedy -> ``temperature=0``; sample -> ``temperature``,
``top_p``, ``top_k`` (0 = off) and ``seed`` (the run seed + the batch start, as the HF path
seeds each batch; vLLM honours per-request seeds, the numbers differ from HF's RNG); beam ->
``use_beam_search`` with beam width ``num_beams`` and ``length_penalty``, best beam kept. vLLM's
beam search takes nothing else, so ``early_stopping``, ``min_new_tokens``, a repetition penalty or
stop strings with beam are refused; and it divides by the length *including the prompt* where HF
divides by the generated length, so with ``length_penalty != 0`` beams that end at different
lengths can rank differently than on HF. ``min_new_tokens`` ->
``min_tokens``; ``stop`` strings are kept in the output, as HF keeps them. Every other sampling
parameter is sent at its neutral value (top_k 0, min_p 0, no penalties): vLLM would otherwise
fill it from the model's ``generation_config.json``, which the HF path does not apply.

Strategies that need hidden states, a second model or candidate look-ahead cannot run behind
vLLM's API (../shared/research/ecosystem.md, section 2b): asking for them is a one-line error.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from contrastkit.errors import UsageError

__all__ = ["VLLM_STRATEGIES", "NOT_ON_VLLM", "VLLMBackend", "check_vllm_strategy", "request_for", "served_model",
           "vllm_json"]

VLLM_STRATEGIES = ("greedy", "sample", "beam")
_CD = ("needs the amateur's (or a lower layer's) logits beside the expert's at every step; vLLM's API returns "
       "one model's sampled tokens")
NOT_ON_VLLM = {
    "contrastive": "needs the hidden states of k look-ahead candidates at every step, which vLLM does not expose",
    "rankgen": "re-ranks beams with a RankGen encoder between decoding steps, which vLLM's API cannot call",
    "cd": _CD, "icd": _CD, "lol": _CD,
    "dola": "contrasts the final layer with a premature layer's logits, which vLLM does not expose",
}


def check_vllm_strategy(name: str) -> None:
    """Raise a one-line UsageError unless ``name`` can run on the vLLM backend."""
    if name in VLLM_STRATEGIES:
        return
    why = NOT_ON_VLLM.get(name, "it is not one of the plain strategies a serving engine runs")
    raise UsageError(f"strategy '{name}' cannot run with --backend vllm: it {why}. Use --backend hf for it "
                     f"(vllm runs: {', '.join(VLLM_STRATEGIES)})")


def request_for(name: str, config, *, max_new_tokens: int, min_new_tokens: int, seed: int | None,
                repetition_penalty: float, stops: list[str]) -> dict:
    """vLLM completion parameters for one strategy config (without model and prompt)."""
    check_vllm_strategy(name)
    # every parameter said explicitly: vLLM fills omitted ones from the model's generation_config.json
    body = {"max_tokens": max_new_tokens, "min_tokens": min_new_tokens, "n": 1,
            "repetition_penalty": repetition_penalty, "return_token_ids": True, "top_p": 1.0, "top_k": 0,
            "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    if stops:
        body.update(stop=stops, include_stop_str_in_output=True)
    if name == "greedy":
        body.update(temperature=0.0)
    elif name == "sample":
        body.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
        if config.seed is not None or seed is not None:
            body["seed"] = config.seed if config.seed is not None else seed
    else:  # beam: vLLM's BeamSearchParams has width, max_tokens, temperature, length_penalty and nothing else
        unsupported = {"early_stopping=true": config.early_stopping, "min_new_tokens > 0": min_new_tokens > 0,
                       "repetition_penalty != 1": repetition_penalty != 1.0, "stop strings": bool(stops)}
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise UsageError(f"beam with {', '.join(bad)} has no vLLM equivalent (vLLM's beam search takes only "
                             f"num_beams and length_penalty); drop it or use --backend hf")
        body.update(use_beam_search=True, n=config.num_beams, length_penalty=config.length_penalty, temperature=0.0)
    return body


def vllm_json(base_url: str, path: str, payload: dict | None = None, *, timeout: float = 600.0) -> dict:
    """GET (no payload) or POST JSON to an OpenAI-compatible server; any failure is a one-line UsageError."""
    url = base_url.rstrip("/") + path
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if payload is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-given server URL
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise UsageError(f"vLLM server at {base_url} refused {path}: HTTP {e.code} {detail}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise UsageError(f"vLLM server at {base_url} did not answer {path}: {e}") from None


def served_model(base_url: str, *, timeout: float = 600.0) -> str:
    """The first model a server lists under ``/v1/models``."""
    models = vllm_json(base_url, "/v1/models", timeout=timeout).get("data") or []
    if not models:
        raise UsageError(f"vLLM server at {base_url} lists no models")
    return models[0]["id"]


@dataclass
class VLLMBackend:
    """A vLLM OpenAI-compatible server as a generation backend (drop-in for :func:`contrastkit.generation.generate`)."""

    base_url: str
    model_name: str | None = None
    timeout: float = 600.0

    def _call(self, path: str, payload: dict | None = None) -> dict:
        return vllm_json(self.base_url, path, payload, timeout=self.timeout)

    def model(self) -> str:
        if self.model_name is None:
            self.model_name = served_model(self.base_url, timeout=self.timeout)
        return self.model_name

    def _completions(self, prompts: list[list[int]], body: dict, tokenizer) -> list[list[int]]:
        """One request for a batch of token-id prompts; the best choice per prompt, as token ids."""
        n = body["n"]
        choices = self._call("/v1/completions", {"model": self.model(), "prompt": prompts, **body}).get("choices", [])
        if len(choices) != len(prompts) * n:
            raise UsageError(f"vLLM server returned {len(choices)} completions for {len(prompts)} prompts, "
                             f"expected {len(prompts) * n}")
        choices = sorted(choices, key=lambda c: c["index"])[::n]  # beam search: choices come best first
        rows = []
        for c in choices:
            ids = c.get("token_ids")
            if ids is None:  # older server: text only
                ids = tokenizer(c.get("text", ""), add_special_tokens=False)["input_ids"]
                if c.get("finish_reason") == "stop" and not c.get("stop_reason"):
                    ids = ids + [tokenizer.eos_token_id]
            rows.append(list(ids))
        return rows

    def generate(self, model, tokenizer, prompts, strategy: str = "greedy", *, max_new_tokens: int = 64,
                 min_new_tokens: int = 0, chat: bool = False, batch_size: int = 8, seed: int | None = 0,
                 repetition_penalty: float | None = None, stop=None, streamer=None, **params):
        """Same arguments and records as :func:`contrastkit.generation.generate`; ``model`` is ignored."""
        from contrastkit.decoding.base import get_strategy
        from contrastkit.generation import (
            GenerationResult,
            encode_prompt,
            gen_kwargs_for_record,
            stop_strings,
            trim_at_stop,
            trim_generated,
        )

        strat = get_strategy(strategy)
        check_vllm_strategy(strat.name)
        if streamer is not None:
            raise UsageError("--stream is not supported with --backend vllm")
        config = strat.make_config(**params)
        if max_new_tokens < 1 or not 0 <= min_new_tokens <= max_new_tokens or batch_size < 1:
            raise UsageError(f"need max_new_tokens >= 1, 0 <= min_new_tokens <= max_new_tokens and batch_size >= 1, "
                             f"got {max_new_tokens}, {min_new_tokens}, {batch_size}")
        rp = float(1.0 if repetition_penalty is None else repetition_penalty)
        stops = stop_strings(stop)
        if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        encoded = [encode_prompt(tokenizer, p, chat=chat, where=f"prompt {i + 1}") for i, p in enumerate(prompts)]
        eos = {tokenizer.eos_token_id}
        results = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            batch_seed = None if seed is None else seed + start
            body = request_for(strat.name, config, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                               seed=batch_seed, repetition_penalty=rp, stops=stops)
            t0 = time.perf_counter()
            rows = self._completions([ids for ids, _ in chunk], body, tokenizer)
            elapsed = time.perf_counter() - t0
            for (ids, text), row in zip(chunk, rows):
                row = trim_at_stop(tokenizer, trim_generated(row[:max_new_tokens], eos), stops)
                results.append(GenerationResult(
                    prompt=text, text=tokenizer.decode(row, skip_special_tokens=True), token_ids=row,
                    strategy=strat.name, params=dict(gen_kwargs_for_record(config)), prompt_tokens=len(ids),
                    new_tokens=len(row), time_s=elapsed / len(chunk),
                    extra={"batch_time_s": elapsed, "repetition_penalty": rp, "stop": stops, "processors": [],
                           "backend": "vllm", "vllm_url": self.base_url, "vllm_model": self.model_name,
                           "seed": body.get("seed")}))
        return results


def load_tokenizer_only(name_or_path: str):
    """The model's tokenizer (left padding, pad token) without loading weights; vLLM holds the model."""
    from transformers import AutoTokenizer

    from contrastkit.models import materialize_gguf, prepare_tokenizer, resolve_source

    source = resolve_source(name_or_path)
    path = materialize_gguf(source.path, source.gguf_file) if source.kind == "gguf" else source.path
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))
