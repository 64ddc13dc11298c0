"""Configuration of CoACT (arXiv 2405.16625) and of the few-shot class-incremental session protocol.

Defaults follow the authors' code (research notes 4.2) where it applies to a text encoder; a help
string that says "(ours)" marks a default the paper and code do not fix for this setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contrastkit.errors import UsageError, check_range

__all__ = ["CoACTConfig", "ProtocolConfig", "INCFT_LAYERS"]

INCFT_LAYERS = ("classifier", "pet", "classifier+pet")


@dataclass
class CoACTConfig:
    """Hyper-parameters of one CoACT model (arXiv 2405.16625 v2, method section: parts (i)-(iii))."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank (code: 16, hard-coded)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (code: 16)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (code: 0.1)."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Attention projections that get LoRA; None = the first of query,value (code; BERT/MiniLM), "
                "q_proj,v_proj (transformers 5 ViT), q_lin,v_lin (DistilBERT) that the encoder has."})
    lora_blocks: list[int] | None = field(default=None, metadata={
        "help": "Encoder blocks with LoRA; None = all blocks (README runs: all 12)."})
    contrastive: bool = field(default=True, metadata={
        "help": "Part (i), asynchronous contrastive tuning: SupCon between the LoRA student and the EMA teacher."})
    controlled_ft: bool = field(default=True, metadata={
        "help": "Part (ii), controlled fine-tuning: unfreeze blocks >= ft_start_layer at a lower learning rate."})
    consistency: bool = field(default=True, metadata={
        "help": "Part (iii), consistency-guided incremental tuning: MSE to the session-0 model's seen-class logits."})
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of cross-entropy (code: 1.0)."})
    supcon_weight: float = field(default=1.0, metadata={"help": "Weight of SupCon (code moco_loss_factor: 1.0)."})
    consistency_weight: float = field(default=1.0, metadata={"help": "Weight of the consistency MSE (code: 1.0)."})
    temperature: float = field(default=0.07, metadata={"help": "SupCon temperature tau (code moco_t: 0.07)."})
    ema_momentum: float = field(default=0.999, metadata={
        "help": "Teacher EMA momentum m in [0, 1]: teacher <- m*teacher + (1-m)*student (code: 0.999)."})
    ft_start_layer: int | None = field(default=-1, metadata={
        "help": "First unfrozen block for controlled fine-tuning; negative counts from the top (-1 = last block, "
                "ours; code default: off, per-dataset 9 of 12)."})
    ft_start_epoch: int = field(default=0, metadata={"help": "Base-session epoch at which blocks unfreeze (code: 0)."})
    encoder_lr_factor: float = field(default=0.1, metadata={
        "help": "Learning-rate factor of the unfrozen pre-trained weights (ours; code per dataset 0.001-1)."})
    incft_layers: str = field(default="classifier+pet", metadata={
        "help": "Trainable in incremental sessions: classifier, pet (LoRA) or classifier+pet (CoACT per dataset)."})
    inc_lr_factor: float = field(default=0.1, metadata={
        "help": "Learning-rate factor of incremental sessions (ours; code per dataset 0.01 or 0.001)."})
    token_mask_prob: float = field(default=0.0, metadata={
        "help": "Text only: fraction of the student view's tokens replaced by [MASK] on top of dropout noise "
                "(ours; SimCSE views are dropout only)."})
    teacher_dropout: bool = field(default=True, metadata={
        "help": "Run the teacher with dropout on, so text views differ by dropout noise (SimCSE; ours)."})
    pooling: str = field(default="auto", metadata={
        "help": "Embedding: mean (over the attention mask), cls, pooler, or auto = mean for text, cls for images."})

    def __post_init__(self):
        check_range("lora_r", self.lora_r, 1)
        check_range("lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        check_range("ema_momentum", self.ema_momentum, 0, 1)
        check_range("temperature", self.temperature, 0, lo_open=True)
        check_range("token_mask_prob", self.token_mask_prob, 0, 1, hi_open=True)
        check_range("encoder_lr_factor", self.encoder_lr_factor, 0)
        check_range("inc_lr_factor", self.inc_lr_factor, 0)
        check_range("ft_start_epoch", self.ft_start_epoch, 0)
        for name in ("ce_weight", "supcon_weight", "consistency_weight"):
            check_range(name, getattr(self, name), 0)
        if self.incft_layers not in INCFT_LAYERS:
            raise UsageError(f"incft_layers must be one of {', '.join(INCFT_LAYERS)}, got {self.incft_layers!r}")
        if self.pooling not in ("auto", "mean", "cls", "pooler"):
            raise UsageError(f"pooling must be one of auto, mean, cls, pooler, got {self.pooling!r}")
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise UsageError("lora_target_modules must name at least one module (or be None for auto)")


@dataclass
class ProtocolConfig:
    """The few-shot class-incremental protocol (research notes 4.1 "Session protocol")."""

    base_classes: int = field(default=60, metadata={"help": "Classes in the base session (FSCIL: 60)."})
    base_shots: int | None = field(default=None, metadata={
        "help": "Training examples per base class; None = all (FSCIL); an int gives a few-shot base (FSCIT)."})
    ways: int = field(default=10, metadata={"help": "New classes per incremental session (N-way)."})
    shots: int = field(default=5, metadata={"help": "Training examples per new class (K-shot)."})
    sessions: int = field(default=9, metadata={"help": "Number of incremental sessions after the base session."})
    test_per_class: int | None = field(default=None, metadata={
        "help": "Test examples per class (subsampled with the seed); None = all."})
    base_epochs: int = field(default=1, metadata={"help": "Epochs of the base session (ours: sized for CPU)."})
    inc_epochs: int = field(default=1, metadata={
        "help": "Epochs of each incremental session (code default 0 turns incremental tuning off; ours 1)."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size (code: 64)."})
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size for embedding and evaluation."})
    learning_rate: float = field(default=0.01, metadata={
        "help": "Base learning rate of LoRA + classifier (ours; code 0.1, FSCIL CIFAR 0.001), SGD Nesterov."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay (code: 5e-4)."})
    max_length: int = field(default=64, metadata={"help": "Text: truncate inputs to this many tokens."})

    def __post_init__(self):
        for name in ("base_classes", "ways", "shots", "batch_size", "eval_batch_size", "max_length"):
            check_range(name, getattr(self, name), 1)
        for name in ("sessions", "base_epochs", "inc_epochs"):
            check_range(name, getattr(self, name), 0)
        check_range("base_shots", self.base_shots, 1)
        check_range("test_per_class", self.test_per_class, 1)
        check_range("learning_rate", self.learning_rate, 0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0)

    @property
    def total_classes(self) -> int:
        return self.base_classes + self.ways * self.sessions
