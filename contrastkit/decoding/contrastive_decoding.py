"""LOL multi-layer fusion contrastive decoding, with CD, ICD and DoLa as presets of one loop.

Strategies (``contrastkit strategies`` lists their parameters):

* ``cd``   Contrastive Decoding (Li et al., arXiv 2210.15097): final-layer ``log p_E - b log p_A``
  with a separate, smaller amateur model of the same tokenizer; plausibility alpha = 0.1.
* ``icd``  Induce-then-Contrast Decoding (Zhang et al., arXiv 2312.15710): the same score with the
  hallucination-induced amateur (``contrastkit train induce``; an adapter path is typical).
* ``dola`` DoLa (Chuang et al., arXiv 2309.03883): no amateur model; the expert's premature layer,
  chosen per row by JSD from a bucket (``lower_layer="high"`` by default), is the amateur.
* ``lol``  LOL (Chen et al., arXiv 2408.08769; code not public, reconstructed in docs/lol.md):
  ICD + lambda x the same contrast at a lower layer j (early exit through the LM head) + gamma x a
  truthfulness-refocus term from an extra expert stream whose context starts with an instruction.

Per step (:func:`contrast_scores.fused_contrast_scores`)::

    F(v) = [E(v) - b A(v)] + lambda [E_j(v) - b A_j(v)] + gamma [R(v) - E(v)],   -inf off V_head(alpha)

then the prepared ``logits_processor`` (repetition penalty, min_new_tokens...) is applied to F (as
in ICD's code) and the token is the argmax (or a sample of softmax(F / temperature)).

Every stream (expert, amateur, refocus) keeps its own KV cache and advances one token per step;
batches are left padded. Streams that run on the same weights share one batched forward: expert +
refocus always, and expert + amateur + refocus when the amateur is a PEFT adapter of the expert
(peft mixed-adapter batches, ``mixed_batch=True``).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from contrastkit.decoding.amateur import (
    BASE,
    Amateur,
    bind_tokenizer,
    final_norm,
    instruction_ids,
    model_layers,
    num_layers,
    parse_layer_spec,
    resolve_amateur,
)
from contrastkit.decoding.base import finish, keep_finished_padded, register_strategy, stream
from contrastkit.decoding.contrast_scores import (
    early_exit_logprobs,
    fill_off_head,
    fused_contrast_scores,
    logprobs,
    select_premature,
    select_tokens,
)
from contrastkit.errors import UsageError, check_range

DEFAULT_INSTRUCTION = (
    "You are a truthful assistant. Answer with facts you are certain of, and never make up information.\n"
)


@dataclass
class ContrastConfig:
    """Parameters of the contrastive-decoding family (each preset changes only the defaults)."""

    amateur: Any = field(
        default=None,
        metadata={"help": "Amateur: a PEFT adapter dir (expert + adapter), a model dir/name, or a model object; "
                          "none = the expert's own lower layer (DoLa)."},
    )
    alpha: float = field(default=0.1, metadata={"help": "Plausibility threshold in [0, 1] on the expert's final layer."})
    score_alpha: float = field(
        default=0.0, metadata={"help": "Plausibility threshold used when scoring given answers (0 = none, as ICD/DoLa MC)."}
    )
    amateur_weight: float = field(default=1.0, metadata={"help": "Weight b of the amateur log-probs (CD's st_coef)."})
    amateur_temperature: float = field(default=1.0, metadata={"help": "Temperature of the amateur's softmax, > 0."})
    lower_layer: str = field(
        default="none",
        metadata={"help": "Lower (premature) layer: an index j (hidden_states[j]), 'middle' (N // 2), a comma list "
                          "(JSD-selected bucket), 'low' / 'high' (HF DoLa buckets), or 'none'."},
    )
    jsd_tolerance: float = field(
        default=1e-4,
        metadata={"help": "Bucket layers whose JSD is within this of the largest count as tied; the earliest wins. "
                          "Keeps DoLa's choice stable when JSDs saturate at ln 2 (0 = plain argmax)."},
    )
    lower_weight: float = field(default=0.0, metadata={"help": "lambda: weight of the lower-layer contrast."})
    final_norm: bool = field(default=False, metadata={"help": "Apply the final norm before the LM head at early exit."})
    refocus_weight: float = field(default=0.0, metadata={"help": "gamma: weight of the truthfulness-refocus term."})
    refocus_instruction: str = field(
        default=DEFAULT_INSTRUCTION, metadata={"help": "Instruction prepended to the refocus stream's context."}
    )
    refocus_ids: list[int] | None = field(
        default=None, metadata={"help": "Token ids of the instruction (overrides the text; no tokenizer needed)."}
    )
    mixed_batch: bool = field(
        default=True, metadata={"help": "With an adapter amateur, run all streams as one mixed-adapter forward "
                                        "(plain LoRA; a LoRA variant such as DoRA runs its amateur rows apart)."}
    )
    sampling: bool = field(default=False, metadata={"help": "Sample from softmax(F / temperature) instead of argmax."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature, > 0."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the sampling generator."})

    def __post_init__(self):
        check_range("alpha", self.alpha, 0, 1)
        check_range("score_alpha", self.score_alpha, 0, 1)
        check_range("amateur_temperature", self.amateur_temperature, 0, None, lo_open=True)
        check_range("temperature", self.temperature, 0, None, lo_open=True)
        check_range("jsd_tolerance", self.jsd_tolerance, 0, None)
        if isinstance(self.lower_layer, (int, list, tuple)) and not isinstance(self.lower_layer, bool):
            items = [self.lower_layer] if isinstance(self.lower_layer, int) else list(self.lower_layer)
            self.lower_layer = ",".join(str(int(i)) for i in items)
        self.lower_layer = str(self.lower_layer).strip().lower()
        parse_layer_spec(self.lower_layer, None, False)  # syntax check; range is checked against the model
        if self.amateur is None and self.lower_weight != 0:
            raise UsageError("lower_weight needs an amateur; with amateur=None the lower layer is the amateur (DoLa)")
        if self.lower_weight != 0 and self.lower_layer == "none":
            raise UsageError(f"lower_weight={self.lower_weight} needs lower_layer (an index, a list, 'low' or 'high')")


PRESETS = {
    "cd": ("Contrastive Decoding (2210.15097): log p_E - b log p_A, separate smaller amateur, alpha=0.1",
           dict(amateur_temperature=1.0)),
    "icd": ("Induce-then-Contrast (2312.15710): contrast with a hallucination-induced amateur (adapter or model)", {}),
    "dola": ("DoLa (2309.03883): contrast the final layer with a JSD-selected premature layer of the same model",
             dict(lower_layer="high")),
    "lol": ("LOL (2408.08769, reconstructed): ICD + lower-layer contrast + truthfulness-refocus stream",
            dict(lower_layer="middle", lower_weight=0.5, refocus_weight=0.0)),  # chosen on TruthfulQA dev: docs/lol.md
}


# Generate-level defaults of a preset (contrastkit.generate / the CLI; overridable): DoLa's code
# (tfqa_eval.py) and HF's DoLa docs use repetition_penalty=1.2 for generation.
GENERATE_DEFAULTS = {"dola": {"repetition_penalty": 1.2}}


# Fields a preset fixes: they are not parameters of that preset (no flag, no YAML key), so a shared
# ``--amateur`` given to several strategies reaches only those that take an amateur.
FIXED = {"dola": {"amateur": None}}


def _preset_config_cls(name: str, overrides: dict) -> type:
    fields = []
    fixed = FIXED.get(name, {})
    for f in dataclasses.fields(ContrastConfig):
        if f.name in fixed:
            continue
        default = overrides.get(f.name, f.default)
        fields.append((f.name, f.type, field(default=default, metadata=f.metadata)))
    doc = f"Parameters of ``{name}``: {PRESETS[name][0]} (same fields as ContrastConfig, other defaults)."
    cls = dataclasses.make_dataclass(
        f"{name.upper()}Config", fields,
        namespace={"__post_init__": ContrastConfig.__post_init__, "__doc__": doc, **fixed},
    )
    cls.__module__ = __name__  # string annotations ('Any', ...) resolve in this module (CLI flag types)
    return cls


@dataclass
class _Group:
    """Streams that run on the same weights as one batched forward, with their own KV cache."""

    streams: list[str]
    run: Any
    adapter_names: list[str] | None
    hidden: bool
    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    cache: Any = None


class ContrastFuser:
    """Per-token fused scores of the family from each stream's final logits and hidden states (no forward).

    ``fuse(res, alpha)`` takes ``res[stream] = (logits (..., V), hidden_states or None)`` for the
    streams ``expert``, ``amateur`` (unless DoLa) and ``refocus`` (when gamma != 0), where
    ``hidden_states[j]`` is the residual state after block ``j`` (only the indices in
    :attr:`layers` are read, and only for the streams in :meth:`needs_hidden`). Used by the
    decoding loop (:class:`ContrastSession`) and by packed multiple-choice scoring
    (:mod:`contrastkit.eval.packed_contrast`), so both compute the one rule.
    """

    saturation_shortcut = False  # select_premature's exact shortcut (the packed scorer turns it on)

    def __init__(self, model, cfg, amateur: Amateur):
        self.model, self.cfg, self.amateur = model, cfg, amateur
        self.layers, self.N = model_layers(model, cfg.lower_layer), num_layers(model)
        if amateur.kind == "none" and not self.layers:
            raise UsageError("this strategy needs amateur= (an adapter dir, a model path or a model), "
                             "or lower_layer for DoLa")
        if amateur.kind == "model" and cfg.lower_weight != 0 and num_layers(amateur.model) != self.N:
            raise UsageError(f"lower_weight needs an amateur with the expert's {self.N} layers, got "
                             f"{num_layers(amateur.model)}; use lower_weight=0 for a smaller amateur (CD)")
        self.head, self.norm = model.get_output_embeddings(), (final_norm(model) if cfg.final_norm else None)
        a_model = amateur.model if amateur.kind == "model" else model
        self.a_head = a_model.get_output_embeddings()
        self.a_norm = final_norm(a_model) if cfg.final_norm and amateur.kind != "none" else None

    def needs_hidden(self) -> dict[str, bool]:
        """Which streams' lower-layer hidden states :meth:`fuse` reads."""
        use_low = self.amateur.kind == "none" or self.cfg.lower_weight != 0
        return {"expert": bool(self.layers) and use_low, "amateur": self.cfg.lower_weight != 0, "refocus": False}

    def streams(self) -> list[str]:
        names = ["expert"]
        if self.amateur.kind != "none":
            names.append("amateur")
        if self.cfg.refocus_weight != 0:
            names.append("refocus")
        return names

    def _premature(self, E, hidden):
        """Expert early-exit log-probs at the JSD-selected bucket layer (per row/position) and its index."""
        def exit_lp(i):
            j = self.layers[i]
            return early_exit_logprobs(hidden[j], self.head, self.norm if j < self.N else None)

        def exit_lp_at(i, positions):  # the same at flat positions only (select_premature's shortcut)
            j = self.layers[i]
            h = hidden[j].reshape(-1, hidden[j].shape[-1])[positions]
            return early_exit_logprobs(h, self.head, self.norm if j < self.N else None)

        at = exit_lp_at if self.saturation_shortcut else None
        return select_premature(E, exit_lp, len(self.layers), self.cfg.jsd_tolerance, exit_logprobs_at=at)

    def _amateur_low(self, hidden, idx):
        stack = torch.stack([hidden[j] for j in self.layers])  # (L, B, t, d)
        h = stack.gather(0, idx[None, ..., None].expand(1, *stack.shape[1:])).squeeze(0)  # (B, t, d)
        if self.a_norm is not None:
            below = torch.tensor(self.layers, device=idx.device)[idx] < self.N  # (B, t)
            h = torch.where(below[..., None], self.a_norm(h), h)
        return logprobs(self.a_head(h), self.cfg.amateur_temperature)

    def fuse(self, res, alpha):
        """(fused scores, expert log-probs), both (..., V); fused is ``-inf`` off the plausibility head."""
        cfg = self.cfg
        E = logprobs(res["expert"][0])
        R = logprobs(res["refocus"][0]) if "refocus" in res else None
        low = {}
        if self.amateur.kind == "none":
            A, _ = self._premature(E, res["expert"][1])
            lower_weight = 0.0
        else:
            A, lower_weight = logprobs(res["amateur"][0], cfg.amateur_temperature), cfg.lower_weight
            if lower_weight != 0:
                E_low, idx = self._premature(E, res["expert"][1])
                low = dict(expert_low=E_low, amateur_low=self._amateur_low(res["amateur"][1], idx))
        fused = fused_contrast_scores(E, A, refocus=R, lower_weight=lower_weight, refocus_weight=cfg.refocus_weight,
                                      amateur_weight=cfg.amateur_weight, alpha=alpha, **low)
        return fused, E


class ContrastSession(ContrastFuser):
    """The expert / amateur / refocus streams of one batch, stepped together; yields fused scores."""

    def __init__(self, model, cfg, amateur: Amateur, input_ids, attention_mask, *, full: bool = False,
                 external_expert: bool = False):
        super().__init__(model, cfg, amateur)
        self.full = full
        B, self.T = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        inputs = {} if external_expert else {"expert": (input_ids, mask)}  # external: a LogitsProcessor's host
        if amateur.kind != "none":
            inputs["amateur"] = (input_ids, mask)
        if cfg.refocus_weight != 0:
            instr = instruction_ids(model, cfg, input_ids.device)[None].expand(B, -1)  # (B, L)
            inputs["refocus"] = (torch.cat([instr, input_ids], 1), torch.cat([torch.ones_like(instr), mask], 1))
        hidden = self.needs_hidden()
        names = list(inputs)
        if amateur.mixes_rows and cfg.mixed_batch and not external_expert and len(names) > 1:
            adapter = {"expert": BASE, "refocus": BASE, "amateur": amateur.adapter_name}
            plan = [(names, amateur.forward, [adapter[n] for n in names for _ in range(B)])]
        else:
            plan = [([n for n in names if n != "amateur"], model, None)]
            if "amateur" in inputs:
                plan.append((["amateur"], amateur.forward, None))
        self.groups = [self._group(inputs, g, run, an, any(hidden[n] for n in g)) for g, run, an in plan if g]
        self.B = B

    @staticmethod
    def _group(inputs, names, run, adapter_names, hidden) -> _Group:
        width = max(inputs[n][0].shape[1] for n in names)
        pad = torch.nn.functional.pad
        ids = torch.cat([pad(inputs[n][0], (width - inputs[n][0].shape[1], 0), value=0) for n in names])
        mask = torch.cat([pad(inputs[n][1], (width - inputs[n][1].shape[1], 0), value=0) for n in names])
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return _Group(names, run, adapter_names, hidden, ids, mask, pos)

    def _forward(self, g: _Group, ids) -> dict:
        kwargs = dict(input_ids=ids, attention_mask=g.mask, position_ids=g.pos, cache=g.cache, use_cache=True,
                      output_hidden_states=g.hidden)
        if not self.full:
            kwargs["logits_to_keep"] = 1
        out = g.run(adapter_names=g.adapter_names, **kwargs) if g.adapter_names else g.run(**kwargs)
        g.cache = out.cache
        keep = slice(-self.T, None) if self.full else slice(-1, None)
        res = {}
        for i, name in enumerate(g.streams):
            rows = slice(i * self.B, (i + 1) * self.B)
            res[name] = (out.logits[rows, keep], out.hidden_states and [h[rows, keep] for h in out.hidden_states])
        return res

    def _run(self, step_ids=None) -> dict:
        res = {}
        for g in self.groups:
            if step_ids is None:
                ids = g.ids
            else:  # (B,) one token, or (B, k) tokens appended after the cached prefix
                step = step_ids if step_ids.dim() == 2 else step_ids[:, None]
                ids = step.repeat(len(g.streams), 1)  # (rows, k), stream-major like the rows
                k = ids.shape[1]
                g.mask = torch.cat([g.mask, g.mask.new_ones(g.mask.shape[0], k)], -1)
                g.pos = g.pos[:, -1:] + torch.arange(1, k + 1, device=g.pos.device)
            res.update(self._forward(g, ids))
        return res

    @torch.no_grad()
    def prefill(self, expert=None):
        """Run every stream on its context; ``expert`` = (logits, hidden_states) when computed elsewhere."""
        res = self._run()
        if expert is not None:
            res["expert"] = expert
        fused, E = self.fuse(res, self.cfg.alpha)
        return fused[:, -1], E[:, -1]

    @torch.no_grad()
    def step(self, next_tokens, expert=None):
        """Feed one token to every stream (incremental, own caches); returns (fused, expert) (B, V) scores."""
        res = self._run(next_tokens)
        if expert is not None:
            res["expert"] = expert
        fused, E = self.fuse(res, self.cfg.alpha)
        return fused[:, -1], E[:, -1]

    def expand(self, n: int) -> None:
        """Repeat a one-row session ``n`` times (caches included): the answers of one question share its prompt."""
        for g in self.groups:
            g.cache.batch_repeat_interleave(n)
            g.mask, g.pos = g.mask.repeat_interleave(n, 0), g.pos.repeat_interleave(n, 0)
            if g.adapter_names:
                g.adapter_names = [a for a in g.adapter_names for _ in range(n)]
        self.B *= n

    @torch.no_grad()
    def score_after_prefix(self, cont_ids: torch.LongTensor) -> torch.Tensor:
        """Run the (1, P) prompt once, expand its caches over the n answers (n, k); (n, k) fused scores."""
        n, k = cont_ids.shape
        first = self._run()  # last prompt position: scores the first answer token
        self.expand(n)
        res = first
        if k > 1:
            self.full, self.T = True, k - 1
            rest = self._run(cont_ids[:, :-1])
            res = {}
            for name, (logits, hidden) in first.items():
                lg = torch.cat([logits.expand(n, -1, -1), rest[name][0]], 1)  # (n, k, V)
                hs = hidden and [torch.cat([h.expand(n, -1, -1), r], 1) for h, r in zip(hidden, rest[name][1])]
                res[name] = (lg, hs)
        else:
            res = {name: (lg.expand(n, -1, -1), h and [x.expand(n, -1, -1) for x in h]) for name, (lg, h) in res.items()}
        fused, _ = self.fuse(res, self.cfg.score_alpha)  # (n, k, V)
        return fused.gather(-1, cont_ids[..., None]).squeeze(-1)

    @torch.no_grad()
    def score_sequences(self, input_ids) -> torch.Tensor:
        fused, _ = self.fuse(self._run(), self.cfg.score_alpha)  # (B, T, V)
        return fused[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)


@torch.no_grad()
def contrast_loop(model, input_ids, logits_processor, stopping_criteria, generation_config, cfg,
                  token_streamer=None, **model_kwargs):
    """The one generate loop of the family: fused scores -> processors (once per step) -> argmax / sample.

    ``do_sample=True`` (from ``generate()`` or the model's ``generation_config.json``) samples, as
    ``sampling=True`` does: HF's warpers (temperature, top-k, top-p) are then among the processors
    and apply to the fused scores, before this strategy's own ``temperature``.
    """
    if model.config.is_encoder_decoder:
        raise UsageError("the contrastive-decoding family (cd, icd, dola, lol) supports decoder-only models; "
                         f"{type(model).__name__} is encoder-decoder: use greedy, sample, beam or contrastive")
    amateur = resolve_amateur(model, cfg.amateur)
    session = ContrastSession(model, cfg, amateur, input_ids, model_kwargs.get("attention_mask"))
    sampling = cfg.sampling or bool(getattr(generation_config, "do_sample", False))
    generator = None
    if sampling and cfg.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(cfg.seed)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    stream(token_streamer, input_ids)
    fused, expert = session.prefill()  # (B, V) each
    while True:
        filled, head = fill_off_head(fused, expert)
        scores = logits_processor(input_ids, filled)
        next_tokens = select_tokens(scores, head, sampling, cfg.temperature, generator)
        next_tokens = keep_finished_padded(next_tokens, unfinished, generation_config)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        stream(token_streamer, next_tokens)
        unfinished &= ~stopping_criteria(input_ids, scores)
        if not unfinished.any():
            break
        fused, expert = session.step(next_tokens)
    return finish(generation_config, input_ids, None, token_streamer)


def _make_strategy(name: str):
    summary, overrides = PRESETS[name]
    cls = _preset_config_cls(name, overrides)
    names = [f.name for f in dataclasses.fields(cls)]

    def custom_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                        token_streamer=None, **kwargs):
        own = {k: kwargs.pop(k) for k in names if k in kwargs}
        return contrast_loop(model, input_ids, logits_processor, stopping_criteria, generation_config,
                             cls(**own), token_streamer, **kwargs)

    P = inspect.Parameter
    params = [P(n, P.POSITIONAL_OR_KEYWORD) for n in
              ("model", "input_ids", "logits_processor", "stopping_criteria", "generation_config")]
    params += [P(f.name, P.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(cls)]
    params += [P("token_streamer", P.KEYWORD_ONLY, default=None), P("model_kwargs", P.VAR_KEYWORD)]
    custom_generate.__signature__ = inspect.Signature(params)
    custom_generate.__name__ = custom_generate.__qualname__ = name
    custom_generate.__doc__ = f"{summary}.\n\nA transformers ``custom_generate`` callable; parameters: see {cls.__name__}."

    def scorer(model, input_ids, attention_mask, config):
        """Per-token fused contrast (alpha = ``score_alpha``) of every next token: (B, T-1) fp32."""
        session = ContrastSession(model, config, resolve_amateur(model, config.amateur), input_ids, attention_mask,
                                  full=True)
        return session.score_sequences(input_ids)

    def prefix_scorer(model, prefix_ids, cont_ids, config):
        """Fused scores (n, k) of n right-padded answers after one shared (1, P) prompt."""
        session = ContrastSession(model, config, resolve_amateur(model, config.amateur), prefix_ids, None)
        return session.score_after_prefix(cont_ids)

    scorer.prefix_scorer = prefix_scorer
    register_strategy(name, cls, summary, scorer=scorer, generate_defaults=GENERATE_DEFAULTS.get(name))(custom_generate)
    return custom_generate, cls


cd, CDConfig = _make_strategy("cd")
icd, ICDConfig = _make_strategy("icd")
dola, DoLaConfig = _make_strategy("dola")
lol, LOLConfig = _make_strategy("lol")

__all__ = [
    "ContrastConfig", "ContrastSession", "contrast_loop", "cd", "icd", "dola", "lol", "Amateur", "bind_tokenizer",
    "DEFAULT_INSTRUCTION",
]
