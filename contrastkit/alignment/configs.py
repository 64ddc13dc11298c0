"""Config dataclasses for the preference trainers: trl's ``DPOConfig`` plus each method's knobs.

Each field carries ``help`` metadata, the one copy of its documentation: the same classes drive
``contrastkit train <m>`` flags and YAML keys (STYLE.md convention 6). ``__post_init__``
validates our fields *before* trl's (which sets up devices), naming the bad value and the valid
range, so a bad config fails before any model is loaded.

Defaults that the papers leave open are ours and say so in their help text (see docs/alignment.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from contrastkit.errors import UsageError, check_range

__all__ = ["ContrastDPOConfig", "HyPOConfig", "TREGConfig", "DEFAULT_BETTER_TEMPLATE", "DEFAULT_WORSE_TEMPLATE"]

# Ours: the T-REG paper's appendix templates were not available (docs/alignment.md, "Defaults").
DEFAULT_BETTER_TEMPLATE = (
    "Below is a request. Write a response that is helpful, honest, harmless, correct, coherent and concise.\n\n"
    "{prompt}"
)
DEFAULT_WORSE_TEMPLATE = (
    "Below is a request. Write a response that is unhelpful, dishonest, harmful, incorrect, incoherent and "
    "verbose.\n\n{prompt}"
)


def _loss_field():
    return field(default="dpo", metadata={
        "help": "Sequence-level preference loss from contrastkit's LOSSES registry: dpo (arXiv 2305.18290, Eq. 7) "
                "or hinge (SLiC, arXiv 2305.10425). Use this instead of trl's loss_type."})


def _check_dpo_family(cfg) -> None:
    """Checks every contrastkit trainer shares: a registered loss and no trl option our loss path ignores."""
    from contrastkit.alignment.losses import get_loss

    get_loss(cfg.loss)  # unknown name -> UsageError with a did-you-mean
    check_range("beta", cfg.beta, 0, lo_open=True)
    loss_type = [cfg.loss_type] if isinstance(cfg.loss_type, str) else list(cfg.loss_type)
    unsupported = {
        "loss_type": loss_type != ["sigmoid"], "f_divergence_type": cfg.f_divergence_type != "reverse_kl",
        "ld_alpha": cfg.ld_alpha is not None, "use_weighting": bool(cfg.use_weighting),
        "loss_weights": cfg.loss_weights not in (None, [1.0]),
    }
    bad = [name for name, is_set in unsupported.items() if is_set]
    if bad:
        raise UsageError(f"{', '.join(bad)} is not supported by contrastkit's trainers (the loss comes from "
                         f"'loss: {cfg.loss}'); leave it at trl's default or use trl's DPOTrainer")
    if cfg.max_length is not None:
        check_range("max_length", cfg.max_length, 2)


@dataclass
class ContrastDPOConfig(DPOConfig):
    """trl ``DPOConfig`` whose loss is a registered pure function (``loss``)."""

    loss: str = _loss_field()

    def __post_init__(self):
        _check_dpo_family(self)
        super().__post_init__()


@dataclass
class HyPOConfig(DPOConfig):
    """DPO plus HyPO's online reverse-KL penalty (Song et al. 2024, arXiv 2406.01462, Alg. 1)."""

    loss: str = _loss_field()
    hypo_lambda: float = field(default=0.1, metadata={
        "help": "Weight lambda of the reverse KL(pi || pi_ref) penalty on online samples (>= 0; 0 = plain DPO, no "
                "sampling). The paper's value is in its appendix; 0.1 is ours."})
    hypo_num_samples: int = field(default=2, metadata={
        "help": "k completions sampled per prompt each step for the leave-one-out REINFORCE estimator (>= 2)."})
    hypo_max_new_tokens: int = field(default=64, metadata={"help": "Max new tokens per online sample (>= 1)."})
    hypo_temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature. The estimator assumes samples from pi itself, i.e. 1.0; other values "
                "bias it (use at your own risk)."})
    hypo_top_p: float = field(default=1.0, metadata={"help": "Nucleus top-p for sampling, (0, 1]; 1.0 = unbiased."})
    hypo_eval_kl: bool = field(default=True, metadata={
        "help": "At each evaluation, sample hypo_num_samples completions per eval prompt and log the held-out "
                "reverse KL(pi || pi_ref) as eval_hypo/kl (the quantity HyPO is about; costs sampling)."})
    hypo_sampler: str = field(default="hf", metadata={
        "help": "Where samples come from: 'hf' (generate on the current policy); 'vllm-colocate' / 'vllm-server' "
                "(vLLM through trl's VLLMGeneration, weights pushed every hypo_sync_every steps); 'vllm-lora' (LoRA "
                "adapter pushed through vLLM's runtime LoRA endpoints); 'vllm-http' (a server whose weights are "
                "never updated: needs hypo_allow_off_policy). See docs/scale_out.md."})
    vllm_server_url: str = field(default="http://127.0.0.1:8000", metadata={
        "help": "Base URL of the vLLM OpenAI-compatible server (hypo_sampler=vllm-http)."})
    vllm_model_name: str | None = field(default=None, metadata={
        "help": "Model name to request from the vLLM server (default: the first one it lists)."})
    # --- issue 15 (scale-out): vLLM weight sync; checked in contrastkit.alignment.vllm_sampler ---
    hypo_sync_every: int = field(default=1, metadata={
        "help": "Push the policy's weights to vLLM when they are this many optimizer steps old (>= 1); every batch "
                "then samples from weights < hypo_sync_every steps old (1 = on-policy, the paper's setting). Ours."})
    hypo_allow_off_policy: bool = field(default=False, metadata={
        "help": "Accept samples from a server whose weights are never synced (hypo_sampler=vllm-http). The KL term "
                "is then biased; the run summary records off_policy: true."})
    vllm_lora_dir: str | None = field(default=None, metadata={
        "help": "Where vllm-lora saves each adapter version (must be readable by the vLLM server; default "
                "<output_dir>/vllm_lora)."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={
        "help": "GPU memory fraction of the colocated vLLM engine (vllm-colocate), (0, 1]. trl's GRPO default."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={
        "help": "Tensor-parallel size of the colocated vLLM engine (vllm-colocate); must divide the process count."})

    def __post_init__(self):
        _check_dpo_family(self)
        check_range("hypo_lambda", self.hypo_lambda, 0)
        if self.hypo_num_samples is None or self.hypo_num_samples < 2:
            raise UsageError(f"hypo_num_samples must be >= 2 (the leave-one-out baseline needs another sample), "
                             f"got {self.hypo_num_samples!r}")
        check_range("hypo_max_new_tokens", self.hypo_max_new_tokens, 1)
        check_range("hypo_temperature", self.hypo_temperature, 0, lo_open=True)
        check_range("hypo_top_p", self.hypo_top_p, 0, 1, lo_open=True)
        from contrastkit.alignment.sampler import SAMPLERS

        if self.hypo_sampler not in SAMPLERS:
            from contrastkit.errors import did_you_mean

            raise UsageError(f"unknown hypo_sampler '{self.hypo_sampler}'.{did_you_mean(self.hypo_sampler, SAMPLERS)}"
                             f" Known: {', '.join(SAMPLERS)}")
        from contrastkit.alignment.vllm_sampler import check_sampler_options

        check_sampler_options(self)  # issue 15: sync_every range; unsynced samplers need the off-policy opt-in
        if self.precompute_ref_log_probs:
            raise UsageError("HyPO needs the reference model in memory for the online KL; "
                             "set precompute_ref_log_probs to false")
        super().__post_init__()


@dataclass
class TREGConfig(DPOConfig):
    """DPO plus T-REG's token-level reward regularizer (Zhou et al. 2024, arXiv 2412.02685)."""

    loss: str = _loss_field()
    treg_alpha: float = field(default=0.25, metadata={
        "help": "Weight alpha of the token-level regularizer (>= 0; 0 = plain DPO). The paper searches "
                "{0.1, 0.25, 0.5}; 0.25 is ours."})
    treg_better_template: str = field(default=DEFAULT_BETTER_TEMPLATE, metadata={
        "help": "Contrastive 'better' prompt; must contain {prompt} (the original prompt text, or the last user "
                "message for chat data). Default is ours: the paper's text was not available."})
    treg_worse_template: str = field(default=DEFAULT_WORSE_TEMPLATE, metadata={
        "help": "Contrastive 'worse' prompt; must contain {prompt}."})
    treg_token_reduction: str = field(default="sum", metadata={
        "help": "Reduce the regularizer over tokens by 'sum' (the paper's equation) or 'mean'."})
    treg_rewards: str = field(default="lazy", metadata={
        "help": "When token rewards are computed: 'lazy' (when a batch first needs a row, so a short run pays "
                "only for the rows it sees) or 'eager' (every row at start, with a progress bar). Both are cached "
                "in output_dir and reused on resume."})
    treg_reward_batch_size: int = field(default=4, metadata={
        "help": "Batch size of the one-off token-reward precompute with the frozen reference (>= 1)."})

    def __post_init__(self):
        _check_dpo_family(self)
        check_range("treg_alpha", self.treg_alpha, 0)
        for name in ("treg_better_template", "treg_worse_template"):
            if "{prompt}" not in (getattr(self, name) or ""):
                raise UsageError(f"{name} must contain the placeholder {{prompt}}, got {getattr(self, name)!r}")
        if self.treg_token_reduction not in ("sum", "mean"):
            raise UsageError(f"treg_token_reduction must be 'sum' or 'mean', got {self.treg_token_reduction!r}")
        check_range("treg_reward_batch_size", self.treg_reward_batch_size, 1)
        if self.treg_rewards not in ("lazy", "eager"):
            raise UsageError(f"treg_rewards must be 'lazy' or 'eager', got {self.treg_rewards!r}")
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise UsageError(f"truncation_mode must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}")
        if self.precompute_ref_log_probs:
            raise UsageError("T-REG needs per-token reference log-probs; set precompute_ref_log_probs to false")
        super().__post_init__()
