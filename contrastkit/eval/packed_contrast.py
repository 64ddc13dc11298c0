"""Packed multiple-choice scoring for the contrastive family (cd, icd, dola, lol).

:class:`contrastkit.eval.truthfulqa.PrefixCachedScorer` packs the answers of several questions
into a few rows over one shared primer (:mod:`contrastkit.eval.packing`). This module carries
that layout over to the fused contrast rules of :mod:`contrastkit.decoding.contrastive_decoding`:

* **expert**: the packed rows through the expert's body (with hidden states when DoLa's premature
  layer or LOL's lower layer is read);
* **amateur**: the *same* rows through the amateur, over the amateur's own primer cache. An
  adapter amateur (ICD: ``contrastkit train induce``) runs the expert's body with its LoRA layers
  switched on; a separate amateur (CD) runs its own body;
* **refocus** (LOL, gamma != 0): the same rows once more, over a primer that starts with the
  refocus instruction, every position shifted by the instruction's length. This is exactly the
  refocus stream of the decoding loop (instruction ids + context ids);
* the LM heads and early exits run only on the tokens whose next-token distribution is read
  (answer positions), and :class:`contrastkit.decoding.contrastive_decoding.ContrastFuser` turns
  them into fused scores: the one implementation the decoding loop and the unpacked scorer use.

So a packed answer score equals the unpacked ``contrastkit.score`` score of the same rule (to fp32
noise); ``tests/contrastkit/eval/test_packed_contrast.py`` checks each preset against it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class PackedStream:
    """One stream of the rule: which body runs, under which switch, after which extra primer tokens."""

    name: str
    inner: Any  # the *ForCausalLM whose body and head run
    body: Any
    switch: Callable[[], Any] = contextlib.nullcontext  # e.g. the adapter amateur's ``enabled``
    offset_ids: list[int] = field(default_factory=list)  # tokens before the primer (LOL's instruction)
    hidden: bool = False  # lower-layer hidden states are read
    key: tuple = ()  # identity of this stream's primer cache (with the primer tokens)


FAMILY = ("cd", "icd", "dola", "lol")  # strategies whose scorer is ContrastFuser's rule


class PackedContrastRule:
    """The fused rule of one cd/icd/dola/lol configuration, as streams over a packed layout."""

    def __init__(self, model, tokenizer, config):
        from contrastkit.decoding.amateur import bind_tokenizer, instruction_ids, resolve_amateur
        from contrastkit.decoding.contrastive_decoding import ContrastFuser
        from contrastkit.eval.truthfulqa import unwrap_causal_lm

        if "_contrastkit_tokenizer" not in model.__dict__:
            bind_tokenizer(model, tokenizer)
        self.config = config
        amateur = resolve_amateur(model, config.amateur)
        self.fuser = ContrastFuser(model, config, amateur)
        self.fuser.saturation_shortcut = True  # exact (select_premature): JSD <= ln 2
        hidden = self.fuser.needs_hidden()
        inner, body = unwrap_causal_lm(model)
        self.streams: list[PackedStream] = []
        for name in self.fuser.streams():
            if name == "expert":
                s = PackedStream(name, inner, body, key=("expert",))
            elif name == "amateur" and amateur.kind == "adapter":
                s = PackedStream(name, inner, body, amateur.enabled, key=("amateur", id(amateur.model),
                                                                         amateur.adapter_name))
            elif name == "amateur":
                a_inner, a_body = unwrap_causal_lm(amateur.model)
                s = PackedStream(name, a_inner, a_body, key=("amateur", id(amateur.model)))
            else:  # refocus: the expert after the instruction
                device = next(model.parameters()).device
                offset = instruction_ids(model, config, device).tolist()
                s = PackedStream(name, inner, body, offset_ids=offset, key=("refocus", tuple(offset)))
            s.hidden = hidden.get(name, False)
            self.streams.append(s)
        self.models = [model] + ([amateur.model] if amateur.kind == "model" else [])

    def unsupported_reason(self, cache=None) -> str | None:
        """Why packing is not exact for one of the rule's models (the expert is checked by the caller)."""
        from contrastkit.eval.truthfulqa import packed_unsupported_reason

        for m in self.models[1:]:
            reason = packed_unsupported_reason(m, None)
            if reason is not None:
                return f"amateur: {reason}"
        return None

    @property
    def layers(self) -> tuple[int, ...]:
        return self.fuser.layers

    def fused_scores(self, states: dict[str, tuple[torch.Tensor, dict[int, torch.Tensor]]]) -> torch.Tensor:
        """(S, V) fused scores at S positions; ``states[stream] = (final state (S, d), {layer j: (S, d)})``."""
        res = {}
        for s in self.streams:
            final, low = states[s.name]
            with s.switch():
                logits = s.inner.get_output_embeddings()(final)  # (S, V)
            hidden = None
            if low:
                hidden = [None] * (self.fuser.N + 1)
                for j, h in low.items():
                    hidden[j] = h
            res[s.name] = (logits, hidden)
        return self.fuser.fuse(res, self.config.score_alpha)[0]


def packed_rule(model, tokenizer, strategy, params: dict) -> PackedContrastRule | None:
    """The packed form of ``strategy`` with ``params``, or None when the strategy is not of the family."""
    if strategy.name not in FAMILY:
        return None
    return PackedContrastRule(model, tokenizer, strategy.make_config(**params))
