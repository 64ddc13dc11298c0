"""The plain strategies transformers already does well: ``greedy``, ``sample`` and ``beam``.

They are thin wrappers, registered so that the registry, the CLI and the API run end to end,
and so that benchmarks compare contrastive methods against *our* greedy in the same loop.
``greedy`` and ``sample`` use :func:`contrastkit.decoding.base.token_loop` (tested token for
token against HF's built-in ``generate``); ``beam`` hands the already-expanded inputs to HF's
own beam search (``GenerationMixin._beam_search``, pinned by a test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.utils import GenerationMixin

from contrastkit.decoding.base import register_strategy, token_loop
from contrastkit.errors import check_range


@dataclass
class GreedyConfig:
    """Greedy decoding has no parameters of its own."""


@register_strategy("greedy", GreedyConfig, "argmax of the processed logits at every step")
def greedy(model, input_ids, logits_processor, stopping_criteria, generation_config, token_streamer=None, **model_kwargs):
    """Greedy decoding; plugs into ``model.generate(custom_generate=greedy)``.

    Example:
        >>> out = model.generate(ids, custom_generate=greedy, max_new_tokens=8)  # doctest: +SKIP
    """
    return token_loop(
        model, input_ids, logits_processor, stopping_criteria, generation_config,
        lambda scores: scores.argmax(-1), token_streamer, **model_kwargs,
    )


@dataclass
class SampleConfig:
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature, > 0."})
    top_k: int = field(default=0, metadata={"help": "Keep only the k most likely tokens (0 = no top-k filter)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1] (1 = no top-p filter)."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampling generator (None: torch's global RNG)."})

    def __post_init__(self):
        check_range("temperature", self.temperature, 0, None, lo_open=True)
        check_range("top_k", self.top_k, 0)
        check_range("top_p", self.top_p, 0, 1, lo_open=True)


def sampling_warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """Temperature, then top-k, then top-p: HF's warper order."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@register_strategy("sample", SampleConfig, "ancestral sampling with temperature / top-k / top-p")
def sample(
    model, input_ids, logits_processor, stopping_criteria, generation_config,
    temperature=1.0, top_k=0, top_p=1.0, seed=None, token_streamer=None, **model_kwargs,
):
    """Multinomial sampling with an explicit ``torch.Generator`` (seeded when ``seed`` is given)."""
    SampleConfig(temperature, top_k, top_p, seed)  # validate when called straight from model.generate
    warpers = LogitsProcessorList([*logits_processor, *sampling_warpers(temperature, top_k, top_p)])
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    def select(scores):
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return token_loop(model, input_ids, warpers, stopping_criteria, generation_config, select, token_streamer, **model_kwargs)


@dataclass
class BeamConfig:
    num_beams: int = field(default=4, metadata={"help": "Number of beams, >= 1."})
    length_penalty: float = field(default=1.0, metadata={"help": "Exponent on length when ranking finished beams."})
    early_stopping: bool = field(default=False, metadata={"help": "Stop as soon as num_beams hypotheses are done."})

    def __post_init__(self):
        check_range("num_beams", self.num_beams, 1)


@register_strategy("beam", BeamConfig, "HF beam search (ranked by summed log-prob / length^penalty)")
def beam(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
    """Beam search: ``generate`` has already expanded the inputs by ``num_beams`` (a GenerationConfig field)."""
    return GenerationMixin._beam_search(
        model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False, **model_kwargs
    )
