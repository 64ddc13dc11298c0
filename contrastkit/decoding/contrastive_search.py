"""Contrastive search (Su et al. 2022, arXiv 2202.06417; Su & Collier 2022, arXiv 2210.14140).

At every step, with context x_<t (prompt + generated tokens) and V_k the top-k tokens of the
processed next-token distribution::

    x_t = argmax_{v in V_k} (1 - alpha) * p(v | x_<t) - alpha * max_{j < t} cos(h_v, h_{x_j})

(2202.06417 section 4.2, "Contrastive Search"; the equation number is not re-checked here).
``h`` are last-layer hidden states (post final norm); the max runs over *every* earlier non-pad
position, prompt included; ``p`` is the softmax of the fp32 logits after the user's/HF's logits
processors; ties go to the higher-probability candidate (first in top-k order). This is the rule
of transformers 4.45-4.55 ``_contrastive_search`` (../shared/research/decoding.md section 1).

Speed: all B·k candidates of a step are scored by **one** forward of the transformer body over
the shared prefix cache, as a tree with an additive 4-D mask (:mod:`contrastkit.decoding.tree`);
the LM head runs only on the B winners, whose logits drive the next step; the winner's KV entries
are spliced into the cache in place, so the cache holds the prefix once. A running (B, T, H)
tensor of normalised context states makes the penalty one batched matmul. Models or backends
that cannot take the tree (flash attention, sliding/static/quantized cache layers, soft-capped
heads) use the ``replicate`` pass automatically (transformers 4.x's algorithm: the cache repeated
k times for one step), which selects the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from contrastkit.decoding.base import (
    finish,
    grow_mask,
    keep_finished_padded,
    prefill_positions,
    register_strategy,
    stream,
)
from contrastkit.decoding.tree import (
    additive_pad_row,
    head_is_linear,
    keep_winner_kv,
    sdpa_gqa,
    tree_mask,
    tree_supported,
)
from contrastkit.errors import UsageError, check_range, did_you_mean

CANDIDATE_PASSES = ("auto", "tree", "replicate")


@dataclass
class ContrastiveSearchConfig:
    """Parameters of contrastive search (defaults: HF / SimCTG README, ../shared/research/decoding.md 1.4)."""

    penalty_alpha: float = field(default=0.6, metadata={
        "help": "Degeneration penalty weight alpha in [0, 1] (0 = greedy; arXiv 2202.06417 uses 0.6)."})
    top_k: int = field(default=4, metadata={
        "help": "Candidates scored per step, >= 1 (1 = greedy). Never defaults to HF's 50."})
    candidate_pass: str = field(default="auto", metadata={
        "help": "How candidates are scored: auto | tree (one forward, 4-D mask, prefix cached once) | "
                "replicate (cache repeated k times; any model). auto picks tree when the model allows it."})

    def __post_init__(self):
        check_range("penalty_alpha", self.penalty_alpha, 0, 1)
        check_range("top_k", self.top_k, 1)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise UsageError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.candidate_pass not in CANDIDATE_PASSES:
            raise UsageError(f"candidate_pass must be one of {', '.join(CANDIDATE_PASSES)}, got "
                             f"{self.candidate_pass!r}.{did_you_mean(self.candidate_pass, CANDIDATE_PASSES)}")


# ---------------------------------------------------------------------------------------------
# Pure scoring functions (tensors in, tensors out)
# ---------------------------------------------------------------------------------------------


def degeneration_penalty(candidate_hidden: torch.Tensor, context_unit: torch.Tensor,
                         context_valid: torch.Tensor) -> torch.Tensor:
    """max_j cos(h_v, h_j) over the valid context positions.

    Args:
        candidate_hidden: (B, k, H) last-layer states of the candidates.
        context_unit: (B, T, H) L2-normalised fp32 context states.
        context_valid: (B, T) bool, False at pad positions (excluded from the max).

    Returns:
        (B, k) fp32 penalty in [-1, 1].
    """
    cand = F.normalize(candidate_hidden.float(), dim=-1)  # (B, k, H)
    cos = torch.bmm(cand, context_unit.transpose(1, 2))  # (B, k, T)
    cos = cos.masked_fill(~context_valid[:, None, :], torch.finfo(cos.dtype).min)
    return cos.amax(dim=-1)  # (B, k)


def contrastive_scores(top_probs: torch.Tensor, penalty: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * p(v) - alpha * penalty(v): (B, k) fp32; argmax (first on ties) is the winner."""
    return (1.0 - alpha) * top_probs.float() - alpha * penalty


# ---------------------------------------------------------------------------------------------
# Running state
# ---------------------------------------------------------------------------------------------


class ContextStates:
    """Preallocated (B, capacity, H) buffer of normalised context states and their validity."""

    def __init__(self, hidden: torch.Tensor, valid: torch.Tensor, capacity: int):
        B, T, H = hidden.shape  # batch, prompt length, hidden size
        capacity = max(capacity, T + 1)
        self.unit = hidden.new_empty(B, capacity, H, dtype=torch.float32)
        self.valid = torch.zeros(B, capacity, dtype=torch.bool, device=hidden.device)
        self.unit[:, :T] = F.normalize(hidden.float(), dim=-1)
        self.valid[:, :T] = valid
        self.length = T

    def penalty(self, candidate_hidden: torch.Tensor) -> torch.Tensor:
        n = self.length
        return degeneration_penalty(candidate_hidden, self.unit[:, :n], self.valid[:, :n])

    def append(self, hidden: torch.Tensor) -> None:
        """Add one (B, H) state (the winners') at the next position."""
        if self.length == self.unit.shape[1]:  # grow (only when stopping outlives max_length)
            self.unit = torch.cat([self.unit, torch.empty_like(self.unit)], dim=1)
            self.valid = torch.cat([self.valid, torch.zeros_like(self.valid)], dim=1)
        self.unit[:, self.length] = F.normalize(hidden.float(), dim=-1)
        self.valid[:, self.length] = True
        self.length += 1


class TreePass:
    """Score the (B, k) candidates in one body forward over the cached prefix (4-D additive mask)."""

    def __init__(self, model, body, cache, attention_mask, next_position):
        self.body, self.cache, self.next_position = body, cache, next_position  # next_position: (B, 1)
        self.prefix_len = cache.get_seq_length()
        B = next_position.shape[0]
        self.pad_row = additive_pad_row(attention_mask, B, self.prefix_len, model.dtype, next_position.device)

    def forward(self, candidates: torch.LongTensor):
        """(B, k) token ids -> ((B, k, H) last-layer states, None: logits come from the head on winners)."""
        k = candidates.shape[1]
        with sdpa_gqa():
            out = self.body(
                input_ids=candidates, attention_mask=tree_mask(self.pad_row, k),
                position_ids=self.next_position.expand(-1, k), cache=self.cache, use_cache=True,
            )
        return out.last_hidden_state, None

    def keep(self, winner: torch.LongTensor) -> None:
        keep_winner_kv(self.cache, self.prefix_len, winner)
        self.prefix_len += 1
        self.next_position = self.next_position + 1
        self.pad_row = F.pad(self.pad_row, (0, 1))  # the winner is attended from now on


class ReplicatePass:
    """Fallback: repeat the cache k times, run B·k one-token rows, keep the winners' rows."""

    def __init__(self, model, body, cache, attention_mask, next_position, head_linear: bool):
        self.model, self.body, self.cache, self.head_linear = model, body, cache, head_linear
        self.attention_mask, self.next_position = attention_mask, next_position

    def forward(self, candidates: torch.LongTensor):
        B, k = candidates.shape
        self.k = k
        self.cache.batch_repeat_interleave(k)
        mask = grow_mask(self.attention_mask)
        mask = None if mask is None else mask.repeat_interleave(k, dim=0)  # (B·k, P + 1)
        kwargs = dict(input_ids=candidates.reshape(B * k, 1), attention_mask=mask, cache=self.cache,
                      position_ids=self.next_position.repeat_interleave(k, dim=0), use_cache=True)
        hidden, logits = run_model(self.model, self.body, self.head_linear, kwargs)
        return hidden.view(B, k, -1), None if logits is None else logits.view(B, k, -1)

    def keep(self, winner: torch.LongTensor) -> None:
        self.cache.batch_select_indices(torch.arange(winner.shape[0], device=winner.device) * self.k + winner)
        self.attention_mask = grow_mask(self.attention_mask)
        self.next_position = self.next_position + 1


class EncoderDecoderPass:
    """Encoder-decoder models (transformers 4.x's algorithm): the encoder ran once in ``generate``;
    each step repeats the decoder's self- and cross-attention cache k times, runs the B·k candidates
    through the decoder, and keeps the winners' rows. Penalty states: ``decoder_hidden_states[-1]``."""

    def __init__(self, model, cache, model_kwargs: dict):
        self.model, self.cache = model, cache
        self.encoder_outputs = model_kwargs["encoder_outputs"]
        self.attention_mask = model_kwargs.get("attention_mask")  # the encoder's padding mask

    def run(self, decoder_ids, encoder_outputs, attention_mask):
        out = self.model(decoder_input_ids=decoder_ids, encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                         cache=self.cache, use_cache=True, output_hidden_states=True)
        self.cache = out.cache
        return out.decoder_hidden_states[-1], out.logits[:, -1].float()

    def prefill(self, decoder_ids):
        return self.run(decoder_ids, self.encoder_outputs, self.attention_mask)

    def forward(self, candidates: torch.LongTensor):
        B, k = candidates.shape
        self.k = k
        self.cache.batch_repeat_interleave(k)
        enc = self.encoder_outputs.__class__(last_hidden_state=self.encoder_outputs.last_hidden_state.repeat_interleave(k, 0))
        mask = None if self.attention_mask is None else self.attention_mask.repeat_interleave(k, 0)
        hidden, logits = self.run(candidates.reshape(B * k, 1), enc, mask)
        return hidden.view(B, k, -1), logits.view(B, k, -1)

    def keep(self, winner: torch.LongTensor) -> None:
        self.cache.batch_select_indices(torch.arange(winner.shape[0], device=winner.device) * self.k + winner)


def run_model(model, body, head_linear: bool, kwargs: dict):
    """-> (last-layer states (B, q, H), fp32 last-position logits (B, V) or None if the head runs later)."""
    if head_linear:
        return body(**kwargs).last_hidden_state, None
    out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1], out.logits[:, -1].float()


def choose_pass(requested: str, model, cache, head_linear: bool) -> str:
    """Resolve ``candidate_pass`` ("auto" -> "tree" when the model and cache allow it)."""
    why_not = tree_supported(model, cache) or (None if head_linear else "the model post-processes its logits")
    if requested == "tree" and why_not:
        raise UsageError(f"candidate_pass='tree' is not possible here: {why_not}. Use 'auto' or 'replicate'.")
    if requested == "auto":
        return "replicate" if why_not else "tree"
    return requested


# ---------------------------------------------------------------------------------------------
# The decoding loop
# ---------------------------------------------------------------------------------------------


@register_strategy("contrastive", ContrastiveSearchConfig,
                   "contrastive search: (1-a)·p(v) - a·max cos(h_v, context) over the top-k (arXiv 2202.06417)")
def contrastive_search(
    model, input_ids, logits_processor, stopping_criteria, generation_config,
    penalty_alpha: float = 0.6, top_k: int = 4, candidate_pass: str = "auto", token_streamer=None, **model_kwargs,
):
    """Contrastive search as a transformers ``custom_generate`` callable.

    Args:
        penalty_alpha: alpha in [0, 1]; 0 (or ``top_k=1``) selects exactly what greedy selects.
        top_k: candidates per step (>= 1).
        candidate_pass: "auto" | "tree" | "replicate" (see :class:`ContrastiveSearchConfig`).
        token_streamer: an HF streamer (``put`` prompt, then each step's tokens, then ``end``).

    Example:
        >>> out = model.generate(ids, custom_generate=contrastive_search, penalty_alpha=0.6, top_k=4,
        ...                      max_new_tokens=32)  # doctest: +SKIP
    """
    config = ContrastiveSearchConfig(penalty_alpha, top_k, candidate_pass)  # validate direct callers too
    if getattr(generation_config, "do_sample", False):
        raise UsageError("contrastive search is deterministic, but do_sample=True (given to generate() or set in the "
                         "model's generation_config.json) would reshape its p with temperature/top-k/top-p warpers; "
                         "pass do_sample=False (transformers 4.55 ran sampling instead of contrastive search here)")
    vocab = model.config.get_text_config().vocab_size
    check_range("top_k", config.top_k, 1, vocab)
    with torch.no_grad():
        return _search(model, input_ids, logits_processor, stopping_criteria, generation_config,
                       config, token_streamer, model_kwargs)


def _prefill(model, input_ids, model_kwargs, head_linear: bool):
    """Prompt forward: returns (body, cache, attention_mask, next_position, hidden (B,T,H), fp32 logits (B,V))."""
    body = model.base_model
    attention_mask = model_kwargs.get("attention_mask")
    position_ids = model_kwargs.get("position_ids")
    if position_ids is None:
        position_ids = prefill_positions(input_ids, attention_mask)
    cache = model_kwargs.get("cache")
    if cache is None:
        cache = DynamicCache(config=model.config)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  cache=cache, use_cache=True)
    hidden, logits = run_model(model, body, head_linear, kwargs)
    if logits is None:
        logits = model.get_output_embeddings()(hidden[:, -1]).float()
    return body, cache, attention_mask, position_ids[:, -1:] + 1, hidden, logits


def _search(model, input_ids, logits_processor, stopping_criteria, generation_config, config, token_streamer,
            model_kwargs):
    B, T = input_ids.shape  # batch size, prompt length (encoder-decoder: the decoder's start tokens)
    if model.config.is_encoder_decoder:
        if config.candidate_pass == "tree":
            raise UsageError("candidate_pass='tree' is not possible for encoder-decoder models; use 'auto' or 'replicate'")
        cache = model_kwargs.get("cache")
        candidates_pass = EncoderDecoderPass(model, cache, model_kwargs)
        hidden, logits = candidates_pass.prefill(input_ids)
        valid = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)  # decoder inputs are never padded
    else:
        head_linear = head_is_linear(model, model.base_model)
        body, cache, attention_mask, next_position, hidden, logits = _prefill(model, input_ids, model_kwargs,
                                                                              head_linear)
        valid = torch.ones(B, T, dtype=torch.bool, device=input_ids.device) if attention_mask is None else \
            attention_mask.bool()
        if choose_pass(config.candidate_pass, model, cache, head_linear) == "tree":
            candidates_pass = TreePass(model, body, cache, attention_mask, next_position)
        else:
            candidates_pass = ReplicatePass(model, body, cache, attention_mask, next_position, head_linear)
    context = ContextStates(hidden, valid, getattr(generation_config, "max_length", None) or T + 256)
    del hidden
    head = model.get_output_embeddings()
    rows = torch.arange(B, device=input_ids.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
    stream(token_streamer, input_ids)
    while True:
        scores = logits_processor(input_ids, logits)  # (B, V) fp32, processors before top-k
        top_probs, top_ids = torch.softmax(scores, dim=-1).topk(config.top_k, dim=-1)  # (B, k)
        cand_hidden, cand_logits = candidates_pass.forward(top_ids)  # (B, k, H), (B, k, V) | None
        winner = contrastive_scores(top_probs, context.penalty(cand_hidden), config.penalty_alpha).argmax(-1)  # (B,)
        candidates_pass.keep(winner)
        win_hidden = cand_hidden[rows, winner]  # (B, H)
        context.append(win_hidden)
        next_tokens = keep_finished_padded(top_ids[rows, winner], unfinished, generation_config)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        stream(token_streamer, next_tokens)
        unfinished &= ~stopping_criteria(input_ids, scores)
        if not unfinished.any():
            break
        logits = head(win_hidden).float() if cand_logits is None else cand_logits[rows, winner]  # (B, V)
    cache = candidates_pass.cache
    if getattr(generation_config, "return_dict_in_generate", False) and cache.is_croppable:
        cache.crop(-1)  # like HF: the last token is fed but not part of the returned cache
    return finish(generation_config, input_ids, cache, token_streamer)
