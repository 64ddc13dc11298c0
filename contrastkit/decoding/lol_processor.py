"""The contrastive family as a transformers ``LogitsProcessor``: plug LOL / ICD / CD / DoLa into HF ``generate``.

Usage (the expert is the model ``generate`` runs; no ``custom_generate`` needed)::

    proc = ContrastLogitsProcessor(model, amateur="runs/amateur", strategy="lol", refocus_ids=...)
    model.generate(ids, logits_processor=[proc], do_sample=False, max_new_tokens=32)
    pipeline("text-generation", model=model, tokenizer=tok)(prompt, logits_processor=[proc], ...)

How it gets its inputs without a second expert pass:

* the expert's final-layer scores are the ``scores`` argument HF hands to every processor;
* the expert's lower-layer states come from forward hooks on the chosen decoder blocks (and the
  embedding / final norm for ``hidden_states[0]`` / ``[N]``), which record the last position of
  every forward the host model runs;
* the amateur and the refocus stream are the processor's own: it holds their KV caches and feeds
  them one token per call (the first call of a sequence prefills them on the prompt).

The fused scores it returns equal the strategy path's (``contrastkit.generate(..., "lol")``), so
greedy HF ``generate`` with this processor picks the same tokens (tested). The processor should
come first in the list, since it reads ``scores`` as the expert's raw logits. Left padding is
inferred from leading pad tokens (``model.generation_config.pad_token_id``); pass
``attention_mask=`` when a prompt may legitimately start with the pad token.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import LogitsProcessor

from contrastkit.decoding.amateur import decoder_layers, final_norm, model_layers, num_layers, resolve_amateur
from contrastkit.decoding.base import get_strategy


class ContrastLogitsProcessor(LogitsProcessor):
    """Fused contrastive scores (LOL by default) as a stateful ``LogitsProcessor`` for HF ``generate``.

    Args:
        model: the expert, i.e. the model ``generate`` is called on.
        amateur: as for the strategies (adapter dir, model path, model object, None for DoLa).
        strategy: preset whose defaults apply: ``lol`` (default), ``icd``, ``cd`` or ``dola``.
        attention_mask: optional (B, T) prompt mask (else inferred from leading pad tokens).
        **params: any other field of the preset's config (alpha, lower_layer, refocus_weight, ...).
    """

    argmax_invariant = False

    def __init__(self, model, amateur=None, *, strategy: str = "lol", attention_mask=None, **params):
        from contrastkit.decoding.contrastive_decoding import ContrastSession

        self._session_cls = ContrastSession
        self.model = model
        strat = get_strategy(strategy)
        if amateur is not None or "amateur" in {f.name for f in dataclasses.fields(strat.config_cls)}:
            params["amateur"] = amateur  # presets that fix the amateur (dola) reject one with a clear error
        self.config = strat.make_config(**{"mixed_batch": False, **params})
        self.amateur = resolve_amateur(model, self.config.amateur)
        self.attention_mask = attention_mask
        self.session = None
        self._length = -1
        self._own_call = False
        self._captured: dict[int, torch.Tensor] = {}
        needs_low = self.amateur.kind == "none" or self.config.lower_weight != 0
        self.layers = model_layers(model, self.config.lower_layer) if needs_low else ()
        self._hooks = [self._hook_module(j).register_forward_hook(self._recorder(j)) for j in self.layers]

    def _hook_module(self, j: int):
        if j == 0:
            return self.model.get_input_embeddings()
        if j == num_layers(self.model):
            return final_norm(self.model)
        return decoder_layers(self.model)[j - 1]

    def _recorder(self, j: int):
        def hook(module, args, output):
            if self._own_call:  # our own amateur / refocus passes run the same modules
                return
            h = output[0] if isinstance(output, tuple) else output
            self._captured[j] = h[:, -1:].detach()  # (B, 1, d): last position only

        return hook

    def remove(self) -> None:
        """Detach the forward hooks from the expert (also done when the processor is garbage collected)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __del__(self):
        try:
            self.remove()
        except Exception:  # interpreter shutdown: the hooks die with the model anyway
            pass

    def _prompt_mask(self, input_ids):
        if self.attention_mask is not None and self.attention_mask.shape == input_ids.shape:
            return self.attention_mask.to(input_ids.device)
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            return None
        return ((input_ids != pad).long().cumsum(-1) > 0).long()  # leading pads only

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: (B, T) the sequences so far; scores: (B, V) expert logits -> (B, V) fused scores."""
        B, T = input_ids.shape
        hidden = [None] * (num_layers(self.model) + 1)
        for j in self.layers:
            hidden[j] = self._captured[j]
        expert = (scores.float()[:, None], hidden)  # (B, 1, V) like the session's own outputs
        self._own_call = True
        try:
            if self.session is None or T != self._length + 1 or B != self.session.B:  # a new generate call
                self.session = self._session_cls(self.model, self.config, self.amateur, input_ids,
                                                 self._prompt_mask(input_ids), external_expert=True)
                fused, _ = self.session.prefill(expert)
            else:
                fused, _ = self.session.step(input_ids[:, -1], expert)
        finally:
            self._own_call = False
        self._length = T
        return fused
