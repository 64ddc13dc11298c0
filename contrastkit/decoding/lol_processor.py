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
greedy HF ``generate`` with this processor picks the same tokens (tested).

Limits, by design:

* HF runs its own processors (``repetition_penalty``, ``min_new_tokens``, ``no_repeat_ngram_size``,
  ...) *before* user processors, so this processor cannot come first. It reads the expert's raw
  last-position logits from a forward hook and raises a :class:`UsageError` when the ``scores``
  it is handed differ from them (something ran before it), instead of fusing processed scores
  into a different rule than the strategy path's. For those options use ``contrastkit.generate``
  or ``model.generate(custom_generate=contrastkit.decoding.lol)``, which apply them to the
  fused scores. Warpers that HF adds *after* user processors (``do_sample=True``) see the fused
  scores, as the strategy path's sampling does.
* A new ``generate`` call is detected from the sequence itself: the state carries over only when
  the new ``input_ids`` extend the previous call's by exactly one token with the same prefix
  (which is what the next step of the same call looks like); anything else starts afresh.
  :meth:`ContrastLogitsProcessor.reset` forces a fresh start.

Left padding is inferred from leading pad tokens (``model.generation_config.pad_token_id``); pass
``attention_mask=`` when a prompt may legitimately start with the pad token.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import LogitsProcessor

from contrastkit.decoding.amateur import decoder_layers, final_norm, model_layers, num_layers, resolve_amateur
from contrastkit.decoding.base import get_strategy
from contrastkit.errors import UsageError


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
        self._seen: torch.Tensor | None = None  # the input_ids of the previous call (a continuation extends them)
        self._own_call = False
        self._captured: dict[int, torch.Tensor] = {}
        self._raw: torch.Tensor | None = None  # the expert's raw last-position logits of its latest forward
        needs_low = self.amateur.kind == "none" or self.config.lower_weight != 0
        self.layers = model_layers(model, self.config.lower_layer) if needs_low else ()
        self._hooks = [self._hook_module(j).register_forward_hook(self._recorder(j)) for j in self.layers]
        self._hooks.append(model.register_forward_hook(self._logits_recorder))

    def reset(self) -> None:
        """Forget the previous sequence: the next call starts a new generation (prefills the streams)."""
        self.session, self._seen, self._raw = None, None, None
        self._captured.clear()

    def _logits_recorder(self, module, args, output):
        if self._own_call:
            return
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple):
            logits = output[0]
        if logits is not None:
            self._raw = logits[:, -1].detach()

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

    def _continues(self, input_ids) -> bool:
        """True iff ``input_ids`` is the previous call's sequence plus one token (the same generation)."""
        prev = self._seen
        if self.session is None or prev is None or input_ids.shape[0] != prev.shape[0]:
            return False
        if input_ids.shape[1] != prev.shape[1] + 1:
            return False
        return bool(torch.equal(input_ids[:, :-1], prev))

    def _check_raw(self, scores) -> None:
        if self._raw is None or self._raw.shape != scores.shape:
            return
        if not torch.equal(self._raw.to(scores.device, torch.float32), scores.float()):
            raise UsageError(
                "ContrastLogitsProcessor needs the expert's raw logits, but a logits processor ran before it "
                "(HF applies repetition_penalty, min_new_tokens, no_repeat_ngram_size, ... before user processors); "
                "use contrastkit.generate(..., strategy) or model.generate(custom_generate=<strategy>), which apply "
                "them to the fused scores")

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: (B, T) the sequences so far; scores: (B, V) expert logits -> (B, V) fused scores."""
        self._check_raw(scores)
        hidden = [None] * (num_layers(self.model) + 1)
        for j in self.layers:
            hidden[j] = self._captured[j]
        expert = (scores.float()[:, None], hidden)  # (B, 1, V) like the session's own outputs
        self._own_call = True
        try:
            if not self._continues(input_ids):  # a new generate call (or a reset)
                self.session = self._session_cls(self.model, self.config, self.amateur, input_ids,
                                                 self._prompt_mask(input_ids), external_expert=True)
                fused, _ = self.session.prefill(expert)
            else:
                fused, _ = self.session.step(input_ids[:, -1], expert)
        finally:
            self._own_call = False
        self._seen = input_ids.clone()
        return fused
