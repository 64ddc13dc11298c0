"""Thin trl ``DPOTrainer`` subclasses: DPO with a registered loss, HyPO and T-REG.

Each subclass overrides one trl method, ``compute_loss``, and copies none of trl's loss code
(../shared/research/alignment.md, section 1.8). trl's ``_compute_loss`` still runs: it does the
policy and reference forwards (with its fused LM head, ``[2B, L-1]`` per-token log-probs, no
``[B, L, V]`` logits) and logs its DPO metrics. A forward hook records those two outputs, and the
loss is then rebuilt from them with our pure functions (:mod:`contrastkit.alignment.losses`):

* :class:`ContrastDPOTrainer`: ``mean_i loss(pi_c, pi_r, ref_c, ref_r; beta)`` for ``args.loss``;
  with the default ``dpo`` loss it equals trl's ``loss_type="sigmoid"`` bit for bit.
* :class:`HyPOTrainer`: + ``lambda * `` the leave-one-out REINFORCE surrogate of
  ``KL(pi || pi_ref)`` on k fresh samples per prompt of the batch (arXiv 2406.01462, Alg. 1).
* :class:`TREGTrainer`: + ``alpha * `` the token-level regularizer with token rewards computed
  once by the frozen reference under contrastive prompts (arXiv 2412.02685).

``__init__`` only wires things (the hook, the sampler, the token-reward columns and collator).
``tests/contrastkit/alignment/test_trainers.py`` pins trl's ``compute_loss``/``_compute_loss``
so that a trl release changing them fails loudly.
"""

from __future__ import annotations

import contextlib
import time

import torch
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from contrastkit.alignment.losses import get_loss, loo_reverse_kl_surrogate, treg_regularizer
from contrastkit.registry import TRAINERS

__all__ = ["ContrastDPOTrainer", "HyPOTrainer", "TREGTrainer", "TRAINER_CLASSES", "HYPO_LOSS_PARTS"]


class _Capture:
    """Forward hook that keeps the outputs of every ``fused_lm_head=True`` call, in call order."""

    def __init__(self):
        self.outputs: list = []

    def __call__(self, module, args, kwargs, output):
        if kwargs.get("fused_lm_head"):
            self.outputs.append(output)


def _attach_capture(trainer) -> _Capture:
    capture = _Capture()
    trainer.model.register_forward_hook(capture, with_kwargs=True)
    if trainer.ref_model is not None:
        trainer.accelerator.unwrap_model(trainer.ref_model).register_forward_hook(capture, with_kwargs=True)
    return capture


def _dpo_terms(trainer, model, inputs, return_outputs: bool) -> dict:
    """Run trl's loss pass, then rebuild the preference loss from the captured per-token log-probs."""
    trainer._capture.outputs.clear()
    trl_result = DPOTrainer.compute_loss(trainer, model, inputs, return_outputs=return_outputs)
    policy_out = trainer._capture.outputs[0]
    mask = inputs["completion_mask"][:, 1:]  # (2B, L-1): position t scores token t+1
    policy_tok = policy_out.log_probs[:, -mask.shape[1]:]  # (2B, L-1), 0 off-completion
    chosen_logps, rejected_logps = policy_tok.sum(dim=1).chunk(2)  # (B,) each, as trl sums them
    ref_tok = None
    if trainer.precompute_ref_logps:
        ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        ref_tok = trainer._capture.outputs[1].log_probs[:, -mask.shape[1]:]  # (2B, L-1), no grad
        ref_chosen, ref_rejected = ref_tok.sum(dim=1).chunk(2)
    losses, chosen_rewards, rejected_rewards = get_loss(trainer.args.loss)(
        chosen_logps, rejected_logps, ref_chosen, ref_rejected, beta=trainer.beta)
    loss = losses.mean()
    if trainer.aux_loss_enabled:  # MoE load balancing, added exactly as trl's _compute_loss adds it
        loss = loss + trainer.router_aux_loss_coef * policy_out.aux_loss
    return {"loss": loss, "pref_loss": losses.mean(), "policy_tok": policy_tok, "ref_tok": ref_tok, "mask": mask,
            "outputs": trl_result[1] if return_outputs else None}


def _finish(loss, terms: dict, return_outputs: bool):
    return (loss, terms["outputs"]) if return_outputs else loss


def _log(trainer, key: str, value) -> None:
    mode = "train" if trainer.model.training else "eval"
    if torch.is_tensor(value):
        value = trainer.accelerator.gather_for_metrics(value.detach().float().reshape(-1)).mean().item()
    trainer._metrics[mode][key].append(float(value))


class ContrastDPOTrainer(DPOTrainer):
    """trl's DPOTrainer whose loss is the registered pure function ``args.loss`` (default ``dpo``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._capture = _attach_capture(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = _dpo_terms(self, model, inputs, return_outputs)
        return _finish(terms["loss"], terms, return_outputs)


def _left_padded_prompts(inputs, pad_token_id: int):
    """(B, P) left-padded prompt ids and mask from trl's right-padded ``[chosen; rejected]`` batch."""
    half = inputs["input_ids"].shape[0] // 2
    ids, cmask = inputs["input_ids"][:half], inputs["completion_mask"][:half]  # (B, L)
    plen = cmask.argmax(dim=1)  # (B,) index of the first completion token = prompt length
    width = int(plen.max())
    idx = torch.arange(width, device=ids.device)[None] + (plen[:, None] - width)  # (B, P), <0 = left pad
    valid = idx >= 0
    prompts = ids.gather(1, idx.clamp(min=0)).masked_fill(~valid, pad_token_id)
    return prompts, valid.long()


def _sequence_logps(model, ids, attn, completion_mask, grad: bool):
    """Summed completion log-probs (N,) through trl's fused head; positions follow the left padding."""
    position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)  # (N, S)
    labels = ids.masked_fill(completion_mask == 0, -100)
    with contextlib.nullcontext() if grad else torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, labels=labels,
                    use_cache=False, fused_lm_head=True)
    return out.log_probs.sum(dim=1)  # (N,), 0 off-completion


def online_kl_term(trainer, inputs) -> torch.Tensor:
    """HyPO's online term for this batch: sample k completions per prompt, return the mean surrogate."""
    from contrastkit.alignment.token_rewards import reference_context

    args, tok = trainer.args, trainer.processing_class
    tok = getattr(tok, "tokenizer", tok)
    k = args.hypo_num_samples
    prompts, prompt_mask = _left_padded_prompts(inputs, tok.pad_token_id)  # (B, P)
    t0 = time.perf_counter()
    completions, comp_mask = trainer._sampler.sample(
        trainer.model_wrapped, prompts, prompt_mask, k=k, max_new_tokens=args.hypo_max_new_tokens,
        temperature=args.hypo_temperature, top_p=args.hypo_top_p)  # (B*k, C) each
    t1 = time.perf_counter()
    ids = torch.cat([prompts.repeat_interleave(k, dim=0), completions], dim=1)  # (B*k, P+C)
    attn = torch.cat([prompt_mask.repeat_interleave(k, dim=0), comp_mask], dim=1)
    scored = torch.cat([torch.zeros_like(prompt_mask).repeat_interleave(k, dim=0), comp_mask], dim=1)
    policy_logps = _sequence_logps(trainer.model, ids, attn, scored, grad=True)  # (B*k,)
    ref_model, ref_ctx = reference_context(trainer)
    with ref_ctx, disable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs):
        ref_logps = _sequence_logps(ref_model, ids, attn, scored, grad=False)
    surrogate, kl = loo_reverse_kl_surrogate(policy_logps.view(-1, k), ref_logps.view(-1, k))  # (B,) each
    lengths = comp_mask.sum(dim=1).float()  # (B*k,)
    _log(trainer, "hypo/kl", kl)
    _log(trainer, "hypo/kl_per_token", (policy_logps - ref_logps).detach().sum() / lengths.sum().clamp(min=1))
    _log(trainer, "hypo/gen_len", lengths)
    _log(trainer, "hypo/eos_rate", ((completions == tok.eos_token_id) & (comp_mask == 1)).any(dim=1).float())
    _log(trainer, "hypo/surrogate", surrogate)
    _log(trainer, "hypo/sample_seconds", t1 - t0)
    _log(trainer, "hypo/kl_loss_seconds", time.perf_counter() - t1)
    return surrogate.mean()


class HyPOTrainer(DPOTrainer):
    """HyPO (Song et al. 2024, arXiv 2406.01462): DPO on offline pairs + ``lambda * KL(pi || pi_ref)`` online.

    Every training micro-batch samples ``hypo_num_samples`` completions for each of its prompts
    from the current policy (``hypo_sampler``: HF generate by default) and adds ``hypo_lambda``
    times the leave-one-out REINFORCE surrogate (:func:`~contrastkit.alignment.losses.loo_reverse_kl_surrogate`).
    Logs the two parts of the loss separately (:data:`HYPO_LOSS_PARTS`): ``hypo/dpo_loss`` (the DPO
    part) and ``hypo/kl_loss`` (``lambda *`` the surrogate, whose value is not the KL; its gradient is
    that of ``lambda * KL``), beside ``hypo/kl`` (the mean sequence KL estimate), ``hypo/kl_per_token``,
    ``hypo/gen_len``, ``hypo/eos_rate``, the sampling/loss seconds and trl's DPO metrics. With
    ``hypo_lambda=0`` nothing is sampled and the loss is DPO's. Eval loss is DPO's alone; with
    ``hypo_eval_kl`` each evaluation also samples on the eval prompts and logs the held-out reverse
    KL to the reference as ``eval_hypo/kl``.
    """

    def __init__(self, *args, sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._capture = _attach_capture(self)
        if sampler is None:
            from contrastkit.alignment.sampler import make_sampler

            tok = getattr(self.processing_class, "tokenizer", self.processing_class)
            sampler = make_sampler(self.args.hypo_sampler, tok, accelerator=self.accelerator,
                                   gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                                   vllm_server_url=self.args.vllm_server_url,
                                   vllm_model_name=self.args.vllm_model_name,
                                   trainer=self)  # issue 15: vLLM samplers sync this trainer's model
        self._sampler = sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = _dpo_terms(self, model, inputs, return_outputs)
        loss = terms["loss"]
        if self.model.training and self.args.hypo_lambda > 0:
            kl_term = self.args.hypo_lambda * online_kl_term(self, inputs)
            _log(self, "hypo/dpo_loss", terms["pref_loss"])
            _log(self, "hypo/kl_loss", kl_term)
            loss = loss + kl_term
        elif not self.model.training and self.args.hypo_eval_kl:
            with torch.no_grad():  # held-out reverse KL to the reference, logged as eval_hypo/kl; eval loss stays DPO's
                online_kl_term(self, inputs)
        return _finish(loss, terms, return_outputs)


class TREGTrainer(DPOTrainer):
    """T-REG (Zhou et al. 2024, arXiv 2412.02685): DPO + ``alpha *`` token-level reward regularizer.

    Token rewards come from the frozen reference (LoRA adapter off, trl's ``ref`` adapter, or
    ``ref_model``) under ``treg_better_template`` / ``treg_worse_template``. With
    ``treg_rewards="lazy"`` (default) they are computed when a batch first needs a row, so a short run
    pays only for the rows it sees; with ``"eager"`` every row is computed at construction (with a
    progress bar). Either way they are cached in ``output_dir`` under a key of everything that
    determines them, and reused on resume (:mod:`contrastkit.alignment.token_rewards`).
    Logs ``treg/reg``, ``treg/weight`` and ``treg/dpo_loss``. With ``treg_alpha=0`` the loss is exactly DPO's.
    """

    def __init__(self, *args, **kwargs):
        from contrastkit.alignment.token_rewards import COLUMNS, LAZY_ROW, TokenRewardCollator

        super().__init__(*args, **kwargs)
        self._capture = _attach_capture(self)
        dc = self.data_collator
        self.data_collator = TokenRewardCollator(pad_token_id=dc.pad_token_id, max_length=dc.max_length,
                                                 truncation_mode=dc.truncation_mode,
                                                 pad_to_multiple_of=dc.pad_to_multiple_of)
        self._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [*COLUMNS, LAZY_ROW]
        self.treg_cache, self._lazy = {}, []
        self.train_dataset = self._attach_token_rewards(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {n: self._attach_token_rewards(d, f"eval_{n}") for n, d in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self._attach_token_rewards(self.eval_dataset, "eval")

    def _compute_rewards(self, rows, progress: bool = False):
        from contrastkit.alignment.token_rewards import compute_token_rewards, reference_context

        args = self.args
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        model, ctx = reference_context(self)
        with ctx, torch.no_grad():
            return compute_token_rewards(model, tok, rows, args.treg_better_template, args.treg_worse_template,
                                         max_length=args.max_length, batch_size=args.treg_reward_batch_size,
                                         truncation_mode=args.truncation_mode, progress=progress)

    def _attach_token_rewards(self, dataset, name: str):
        from contrastkit.alignment.token_rewards import (
            LAZY_ROW,
            LazyTokenRewards,
            cache_path,
            cached_token_rewards,
            reference_adapter,
            reference_context,
            reference_model_hash,
        )

        args = self.args
        key = dict(model_hash=reference_model_hash(reference_context(self)[0], reference_adapter(self)),
                   better=args.treg_better_template, worse=args.treg_worse_template, max_length=args.max_length,
                   truncation_mode=args.truncation_mode)
        t0 = time.perf_counter()
        if args.treg_rewards == "lazy":
            rank = self.accelerator.process_index if self.accelerator.num_processes > 1 else None
            store = LazyTokenRewards(dataset, cache_path(dataset, args.output_dir, name, **key), self._compute_rewards,
                                     rank=rank)
            self._lazy.append(store)
            self.treg_cache[name] = {"mode": "lazy", "path": str(store.path), "cached": store.loaded > 0,
                                     "rows": len(dataset), "rows_from_cache": store.loaded}
            base = (len(self._lazy) - 1) << 40
            return dataset.add_column(LAZY_ROW, [base + i for i in range(len(dataset))])
        progress = not args.disable_tqdm and self.accelerator.is_main_process
        with args.main_process_first(desc=f"T-REG token rewards ({name})"):
            dataset, path, cached = cached_token_rewards(
                dataset, args.output_dir, name, lambda: self._compute_rewards(dataset, progress), **key)
        self.treg_cache[name] = {"mode": "eager", "path": str(path), "cached": cached,
                                 "seconds": time.perf_counter() - t0, "rows": len(dataset)}
        return dataset

    def _lazy_token_rewards(self, ids: torch.Tensor, width: int) -> torch.Tensor:
        """(2B, width) rewards for the batch rows ``ids`` (B,), computing the rows seen for the first time."""
        from contrastkit.alignment.token_rewards import align_token_rewards

        ids = ids.tolist()
        store = self._lazy[ids[0] >> 40]
        rows = store.rows([i & ((1 << 40) - 1) for i in ids])
        for name, entry in self.treg_cache.items():
            if entry.get("path") == str(store.path):
                entry.update(rows_computed=store.computed, seconds=store.seconds)
        return align_token_rewards(rows, width, self.args.max_length, self.args.truncation_mode)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        token_rewards = inputs.pop("token_rewards", None)  # not a model kwarg (alignment.md 1.8c)
        lazy_rows = inputs.pop("treg_rows", None)
        if lazy_rows is not None and self.args.treg_alpha > 0:
            token_rewards = self._lazy_token_rewards(lazy_rows, inputs["input_ids"].shape[1])
            token_rewards = token_rewards.to(inputs["input_ids"].device)
        terms = _dpo_terms(self, model, inputs, return_outputs)
        loss = terms["loss"]
        if token_rewards is not None and self.args.treg_alpha > 0:
            reg, weights = treg_regularizer(terms["policy_tok"], terms["ref_tok"], token_rewards[:, 1:],
                                            terms["mask"], beta=self.beta, reduction=self.args.treg_token_reduction)
            _log(self, "treg/dpo_loss", terms["pref_loss"])
            _log(self, "treg/reg", reg)
            _log(self, "treg/weight", weights)
            loss = loss + self.args.treg_alpha * reg.mean()
        return _finish(loss, terms, return_outputs)


HYPO_LOSS_PARTS = {
    "loss": "hypo/dpo_loss + hypo/kl_loss (+ MoE aux loss)",
    "hypo/dpo_loss": "DPO part: mean preference loss on the offline pairs",
    "hypo/kl_loss": "KL part: hypo_lambda * leave-one-out REINFORCE surrogate on online samples (its value is "
                    "not the KL; its gradient is hypo_lambda * grad KL(pi || pi_ref))",
    "hypo/kl": "estimate of KL(pi || pi_ref) per sequence on the online samples (eval_hypo/kl: held-out prompts)",
}

TRAINER_CLASSES = {"dpo": ContrastDPOTrainer, "hypo": HyPOTrainer, "treg": TREGTrainer}
for _name, _cls in TRAINER_CLASSES.items():
    TRAINERS.register(_name, _cls)
