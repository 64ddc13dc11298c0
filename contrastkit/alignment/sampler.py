"""Online samplers for HyPO: k completions per prompt from the current policy.

A sampler has one method::

    sample(model, prompt_ids, prompt_mask, *, k, max_new_tokens, temperature, top_p) -> (completions, mask)

``prompt_ids``/``prompt_mask`` are (N, P) left-padded prompts; the result is an (N*k, C) LongTensor
of completion tokens (rows ``i*k .. i*k+k-1`` belong to prompt i), padded with the pad id after
the first EOS, together with the (N*k, C) mask of real completion tokens (up to and including the
first EOS; :func:`completion_mask_until_eos`). A pad id generated *before* EOS is a real token.

* :class:`HFSampler` (default) runs ``model.generate`` on the policy being trained, inside
  trl's ``unwrap_model_for_generation`` (DDP/DeepSpeed unwrap, gradient checkpointing off).
* :class:`VLLMHTTPSampler` asks an OpenAI-compatible vLLM server (``vllm serve`` /
  ``trl vllm-serve``) over HTTP with the standard library; vllm itself is never imported. The
  server samples from *its* weights and this sampler never updates them, so HyPO refuses it
  unless ``hypo_allow_off_policy`` is set (recorded as ``off_policy: true`` in the run summary).
* ``vllm-colocate``, ``vllm-server``, ``vllm-lora``: vLLM with weight sync every
  ``hypo_sync_every`` optimizer steps (:mod:`contrastkit.alignment.vllm_sampler`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contrastkit.errors import UsageError

__all__ = ["HFSampler", "VLLMHTTPSampler", "SAMPLERS", "completion_mask_until_eos", "make_sampler"]


def completion_mask_until_eos(completions: torch.Tensor, eos_token_id: int,
                              lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C) long mask: 1 on every completion token up to and including the first EOS.

    Tokens after the first EOS get 0, so they add nothing to log pi or the KL estimate; so do
    positions at or beyond ``lengths`` (N,) when given (rows padded without an EOS). The pad id is
    not special: a model may generate it as an ordinary token before its EOS.
    """
    is_eos = (completions == eos_token_id).long()  # (N, C)
    mask = (torch.cumsum(is_eos, dim=1) - is_eos) == 0  # (N, C) no EOS strictly before t
    if lengths is not None:
        mask &= torch.arange(completions.shape[1], device=completions.device)[None] < lengths[:, None]
    return mask.long()


@dataclass
class HFSampler:
    """Sample with Hugging Face ``generate`` on the current policy (the default)."""

    pad_token_id: int
    eos_token_id: int
    accelerator: object | None = None
    gradient_checkpointing_kwargs: dict | None = None

    def generation_config(self, *, temperature: float, top_p: float, max_new_tokens: int):
        """Only what the estimator allows: softmax(logits / T), optional top-p, every other processor neutral.

        The model's own ``generation_config`` (repetition penalty, n-gram bans, min length,
        suppressed or forced tokens, top-k, ...) must not reach the sampler: it would bias HyPO's
        REINFORCE estimate, whose samples must come from pi itself.
        """
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=True, num_beams=1, num_return_sequences=1, temperature=temperature, top_p=top_p, top_k=0,
            min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
            encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
            min_new_tokens=0, max_new_tokens=max_new_tokens, bad_words_ids=None,
            suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None, forced_eos_token_id=None,
            sequence_bias=None, exponential_decay_length_penalty=None, renormalize_logits=False,
            pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id, use_cache=True)

    @staticmethod
    def _generate(model, ids, mask, gen):
        """``generate`` with ``gen`` also standing in for the model's own generation_config (transformers fills
        every unset value from it), restored afterwards."""
        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        saved = target.generation_config
        target.generation_config = gen
        try:
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        finally:
            target.generation_config = saved

    @torch.no_grad()
    def sample(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, k: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
        ids = prompt_ids.repeat_interleave(k, dim=0)  # (N*k, P)
        mask = prompt_mask.repeat_interleave(k, dim=0)  # (N*k, P)
        gen = self.generation_config(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        if self.accelerator is None:
            out = self._generate(model, ids, mask, gen)
        else:
            from trl.models.utils import unwrap_model_for_generation

            with unwrap_model_for_generation(model, self.accelerator,
                                             gradient_checkpointing_kwargs=self.gradient_checkpointing_kwargs) as m:
                out = self._generate(m, ids, mask, gen)
        completions = out[:, ids.shape[1]:]  # (N*k, C)
        mask = completion_mask_until_eos(completions, self.eos_token_id)
        return completions.masked_fill(mask == 0, self.pad_token_id), mask


# vLLM fills every sampling parameter a request leaves out from the model's generation_config.json
# (``--generation-config auto``, the default of recent vLLM): a served top_k / min_p / repetition penalty would then
# bias HyPO's estimator, whose samples must come from softmax(logits / T) (top-p aside). Say them all.
NEUTRAL_VLLM_SAMPLING = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                         "frequency_penalty": 0.0, "min_tokens": 0}


@dataclass
class VLLMHTTPSampler:
    """Sample from an OpenAI-compatible vLLM server (``POST {url}/v1/completions`` with token-id prompts).

    Completions come back as token ids when the server returns them (vLLM's ``return_token_ids``),
    otherwise the text is re-tokenized with ``tokenizer`` and an EOS appended when the server
    stopped on it (``finish_reason == "stop"``).
    """

    base_url: str
    tokenizer: object
    model_name: str | None = None
    timeout: float = 120.0
    off_policy: bool = True  # the server's weights are never updated by this sampler

    def summary(self) -> dict:
        return {"name": "vllm-http", "off_policy": self.off_policy, "sync_every": None, "n_syncs": 0}

    def _post(self, path: str, payload: dict | None = None) -> dict:
        from contrastkit.vllm_backend import vllm_json

        return vllm_json(self.base_url, path, payload, timeout=self.timeout)

    def _model(self) -> str:
        if self.model_name is None:
            from contrastkit.vllm_backend import served_model

            self.model_name = served_model(self.base_url, timeout=self.timeout)
        return self.model_name

    def sample(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, k: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]  # unpadded
        payload = {"model": self._model(), "prompt": prompts, "n": k, "max_tokens": max_new_tokens,
                   "temperature": temperature, "top_p": top_p, "return_token_ids": True, **NEUTRAL_VLLM_SAMPLING}
        choices = sorted(self._post("/v1/completions", payload).get("choices", []), key=lambda c: c["index"])
        if len(choices) != len(prompts) * k:
            raise UsageError(f"vLLM server returned {len(choices)} completions, expected {len(prompts) * k}")
        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        rows = []
        for c in choices:
            ids = c.get("token_ids")
            if ids is None:
                ids = tok(c.get("text", ""), add_special_tokens=False)["input_ids"]
                if c.get("finish_reason") == "stop":
                    ids = ids + [eos]
            rows.append(torch.tensor(ids[:max_new_tokens] or [eos], dtype=torch.long))
        out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_token_id)
        lengths = torch.tensor([len(r) for r in rows])
        mask = completion_mask_until_eos(out, eos, lengths)
        return out.to(prompt_ids.device), mask.to(prompt_ids.device)


def _hf_sampler(tokenizer, *, accelerator=None, gradient_checkpointing_kwargs=None, **_):
    return HFSampler(tokenizer.pad_token_id, tokenizer.eos_token_id, accelerator, gradient_checkpointing_kwargs)


def _vllm_http_sampler(tokenizer, *, vllm_server_url: str = "http://127.0.0.1:8000", vllm_model_name=None,
                       trainer=None, **_):
    if trainer is not None:
        from contrastkit.alignment.vllm_sampler import check_sampler_options

        check_sampler_options(trainer.args)  # raises unless off-policy samples were opted into
    return VLLMHTTPSampler(vllm_server_url, tokenizer, vllm_model_name)


def _lazy(name: str):
    def factory(tokenizer, **options):
        from contrastkit.alignment import vllm_sampler

        return getattr(vllm_sampler, name)(tokenizer, **options)

    return factory


SAMPLERS = {"hf": _hf_sampler, "vllm-http": _vllm_http_sampler, "vllm-colocate": _lazy("vllm_colocate_sampler"),
            "vllm-server": _lazy("vllm_server_sampler"), "vllm-lora": _lazy("vllm_lora_sampler")}


def make_sampler(name: str, tokenizer, **options):
    """Build the sampler registered as ``name`` in :data:`SAMPLERS` (``hf`` or ``vllm-http``).

    ``options``: ``accelerator``, ``gradient_checkpointing_kwargs`` (hf); ``vllm_server_url``,
    ``vllm_model_name`` (vllm-http); ``trainer`` (the vLLM samplers read its args and step, and
    sync its model). Options a sampler does not use are ignored.
    """
    if name not in SAMPLERS:
        from contrastkit.errors import did_you_mean

        raise UsageError(f"unknown sampler '{name}'.{did_you_mean(name, SAMPLERS)} Known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](tokenizer, **options)
