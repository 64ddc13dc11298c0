"""What a decoding strategy is, and the loop pieces that every strategy shares.

A strategy is registered once, under its CLI name, as a :class:`DecodingStrategy`:

* ``config_cls``: a dataclass of the strategy's own parameters (``field(metadata={"help": ...})``
  on every field, validated in ``__post_init__``). The same class drives CLI flags and YAML keys.
* ``custom_generate``: a callable with the signature transformers 5.x expects from
  ``model.generate(custom_generate=fn)`` (../shared/research/ecosystem.md section 1a)::

      fn(model, input_ids, logits_processor, stopping_criteria, generation_config,
         <the strategy's own params as keyword arguments>, token_streamer=None, **model_kwargs)

  ``generate`` pops the declared keyword arguments from its kwargs before it builds the
  ``GenerationConfig``, so the strategy's parameters never mix with HF's (HF's ``top_k=50``
  default cannot leak into contrastive search). The callable receives the *prepared*
  logits processors (``min_new_tokens``, repetition penalty, user processors) and stopping
  criteria (``max_new_tokens``, EOS, user criteria) and must honour both.
* ``scorer`` (optional): the strategy's per-token scoring rule, used by :func:`contrastkit.score`.

Because every strategy is a ``custom_generate`` callable, the Python API, the CLI, HF
``model.generate`` and ``pipeline("text-generation")`` all run the very same code.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from contrastkit.errors import UsageError, did_you_mean
from contrastkit.registry import DECODERS


@dataclass(frozen=True)
class DecodingStrategy:
    """A registered decoding strategy (see the module docstring)."""

    name: str
    config_cls: type
    custom_generate: Callable
    summary: str
    scorer: Callable | None = None
    hf_kwargs: Callable[[Any], dict] | None = None  # maps a config onto model.generate kwargs; default: asdict
    # generate-level options this strategy defaults differently (e.g. dola: repetition_penalty=1.2);
    # applied by contrastkit.generate / the CLI when the caller gives no value
    generate_defaults: dict = dataclasses.field(default_factory=dict)

    def make_config(self, **params):
        """Build and validate the strategy's config; unknown names raise with a did-you-mean."""
        names = [f.name for f in dataclasses.fields(self.config_cls)]
        for key in params:
            if key not in names:
                valid = ", ".join(names) or "none"
                raise UsageError(
                    f"strategy '{self.name}' has no parameter '{key}'.{did_you_mean(key, names)} Valid: {valid}"
                )
        return self.config_cls(**params)

    def generate_kwargs(self, config) -> dict:
        """Keyword arguments for ``model.generate`` that carry this config (plus ``custom_generate``)."""
        kwargs = self.hf_kwargs(config) if self.hf_kwargs else dataclasses.asdict(config)
        return {"custom_generate": self.custom_generate, **kwargs}

    @property
    def streams(self) -> bool:
        return "token_streamer" in inspect.signature(self.custom_generate).parameters

    def parameters(self) -> list[tuple[str, str, Any, str]]:
        """``(name, type, default, help)`` for every parameter: what ``contrastkit strategies`` lists."""
        out = []
        for f in dataclasses.fields(self.config_cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append((f.name, str(f.type), default, f.metadata.get("help", "")))
        return out


def register_strategy(
    name: str,
    config_cls: type,
    summary: str,
    *,
    scorer: Callable | None = None,
    hf_kwargs: Callable[[Any], dict] | None = None,
    generate_defaults: dict | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator: register a ``custom_generate`` callable as strategy ``name``; returns the callable unchanged."""

    def decorator(fn: Callable) -> Callable:
        DECODERS.register(name, DecodingStrategy(name, config_cls, fn, summary, scorer, hf_kwargs,
                                                 dict(generate_defaults or {})))
        fn.strategy_name = name
        return fn

    return decorator


def get_strategy(name_or_strategy: str | DecodingStrategy) -> DecodingStrategy:
    """Look a strategy up by CLI name (importing the built-ins first)."""
    if isinstance(name_or_strategy, DecodingStrategy):
        return name_or_strategy
    import contrastkit.decoding  # noqa: F401  (registers the built-in strategies)

    return DECODERS.get(name_or_strategy)


# ---------------------------------------------------------------------------------------------
# Loop pieces shared by the strategies
# ---------------------------------------------------------------------------------------------


def prefill_positions(input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
    """Position ids for a left-padded prompt: ``cumsum(mask) - 1`` (pads clamped to 0)."""
    if attention_mask is None:
        B, T = input_ids.shape  # batch size, prompt length
        return torch.arange(T, device=input_ids.device).expand(B, T)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_kwargs(model_kwargs: dict) -> dict:
    """The model-forward extras worth keeping from what ``generate`` hands a callable."""
    return {"logits_to_keep": 1} if "logits_to_keep" in model_kwargs else {}


def stream(token_streamer, ids: torch.Tensor) -> None:
    if token_streamer is not None:
        token_streamer.put(ids.cpu())


def keep_finished_padded(next_tokens: torch.LongTensor, unfinished: torch.BoolTensor, generation_config) -> torch.LongTensor:
    """Finished rows emit the pad token (as HF's loops do)."""
    pad = generation_config._pad_token_tensor
    if pad is None:
        return next_tokens
    return torch.where(unfinished, next_tokens, pad.to(next_tokens.device))


def grow_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Append one attended position to a 2D mask (None stays None: no padding anywhere)."""
    if attention_mask is None:
        return None
    return torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)


def finish(generation_config, sequences: torch.LongTensor, cache=None, token_streamer=None):
    """Return what ``generate`` callers expect: a tensor, or an output object when asked for a dict."""
    if token_streamer is not None:
        token_streamer.end()
    if getattr(generation_config, "return_dict_in_generate", False):
        return GenerateDecoderOnlyOutput(sequences=sequences, cache=cache)
    return sequences


class StepForward:
    """One model forward per step for decoder-only and encoder-decoder models alike.

    Decoder-only: the (left-padded) prompt is prefilled with its mask and pad-aware positions,
    then one token per step. Encoder-decoder: ``generate`` has already run the encoder once
    (``encoder_outputs``) and hands the decoder's start tokens as ``input_ids``; every step feeds
    the decoder with the encoder states and the encoder's padding mask.
    """

    def __init__(self, model, input_ids: torch.LongTensor, model_kwargs: dict):
        self.model = model
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.attention_mask = model_kwargs.get("attention_mask")
        self.position_ids = model_kwargs.get("position_ids")
        if self.position_ids is None and not self.encoder_decoder:
            self.position_ids = prefill_positions(input_ids, self.attention_mask)
        self.encoder_outputs = model_kwargs.get("encoder_outputs")
        self.extra = forward_kwargs(model_kwargs)
        self.cache = model_kwargs.get("cache")

    def __call__(self, ids: torch.LongTensor, **kwargs):
        """Feed ``ids`` (the prompt on the first call, then (B, 1) tokens); returns the model output."""
        if self.encoder_decoder:
            out = self.model(decoder_input_ids=ids, encoder_outputs=self.encoder_outputs,
                             attention_mask=self.attention_mask, cache=self.cache, use_cache=True, **self.extra, **kwargs)
        else:
            out = self.model(input_ids=ids, attention_mask=self.attention_mask, position_ids=self.position_ids,
                             cache=self.cache, use_cache=True, **self.extra, **kwargs)
        self.cache = out.cache
        return out

    def advance(self) -> None:
        """One more attended position (decoder-only; the encoder's mask never changes)."""
        if not self.encoder_decoder:
            self.attention_mask = grow_mask(self.attention_mask)
            self.position_ids = self.position_ids[:, -1:] + 1


def token_loop(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    select: Callable[[torch.Tensor], torch.LongTensor],
    token_streamer=None,
    **model_kwargs,
):
    """One-token-per-step decoding with a KV cache; ``select(scores) -> (B,) tokens`` picks each token.

    ``scores`` are the fp32 last-position logits after ``logits_processor``. Greedy and sampling
    are both this loop with a different ``select``; encoder-decoder models run their decoder here.
    """
    forward = StepForward(model, input_ids, model_kwargs)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    stream(token_streamer, input_ids)
    out = forward(input_ids)
    while True:
        scores = logits_processor(input_ids, out.logits[:, -1].float())  # (B, V) fp32
        next_tokens = keep_finished_padded(select(scores), unfinished, generation_config)  # (B,)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        stream(token_streamer, next_tokens)
        unfinished &= ~stopping_criteria(input_ids, scores)
        if not unfinished.any():
            break
        forward.advance()
        out = forward(next_tokens[:, None])
    return finish(generation_config, input_ids, out.cache, token_streamer)
