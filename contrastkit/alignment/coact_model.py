"""The CoACT model: LoRA student, EMA teacher without adapters, bias-free prototype classifier.

Roy et al., arXiv 2405.16625 v2, parts (i) (asynchronous contrastive tuning) and (ii) (controlled
fine-tuning); research notes 4.1 and 4.4 map the authors' ViT code onto peft for any HF encoder.

* ``student``: the encoder wrapped by peft LoRA on the attention projections (``query``/``value``)
  of the chosen blocks; every pre-trained weight starts frozen.
* ``teacher``: a frozen copy of the encoder taken *before* LoRA is added (so it has no adapters),
  moved towards the student's base weights by EMA after each optimizer step. It only drifts where
  controlled fine-tuning unfroze the student's pre-trained weights ("asynchronous").
* ``classifier``: ``Linear(d, C, bias=False)``; rows are set to class-mean embeddings
  (prototypes); ``seen`` marks the classes that have rows, the others are masked everywhere.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from contrastkit.alignment.coact_config import CoACTConfig
from contrastkit.alignment.coact_losses import class_means, ema_update_, masked_logits
from contrastkit.errors import UsageError

__all__ = ["CoACTModel", "block_index", "student_to_teacher_name", "lora_targets"]

_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h)\.(\d+)\.")


def block_index(name: str) -> int | None:
    """Encoder block of a parameter name (``encoder.layer.<n>.``, ``layers.<n>.``), or None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def student_to_teacher_name(name: str) -> str:
    """peft name of a base weight -> plain encoder name (strip ``base_model.model.`` and ``.base_layer``)."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer", "")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2 style projections


_TARGET_PAIRS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"))


def lora_targets(encoder, cfg: CoACTConfig) -> list[str]:
    """``cfg.lora_target_modules``, or the first known (query, value) name pair the encoder has."""
    if cfg.lora_target_modules is not None:
        return list(cfg.lora_target_modules)
    found = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if _is_linear(m)}
    return list(next((pair for pair in _TARGET_PAIRS if set(pair) <= found), _TARGET_PAIRS[0]))


def _check_lora_targets(encoder, targets: list[str], blocks: list[int]) -> None:
    found = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if _is_linear(m)}
    missing = [t for t in targets if t not in found]
    name = getattr(encoder.config, "_name_or_path", "") or type(encoder).__name__
    if missing:
        linears = sorted(found)
        raise UsageError(f"encoder '{name}' cannot be LoRA-wrapped: no modules named {', '.join(missing)} "
                         f"(its linear layers are named: {', '.join(linears[:12]) or 'none'}); "
                         "set lora_target_modules")
    n_layers = getattr(encoder.config, "num_hidden_layers", None)
    if n_layers is None or not any(block_index(n) is not None for n, _ in encoder.named_parameters()):
        raise UsageError(f"encoder '{name}' cannot be LoRA-wrapped per block: no 'layer.<n>' blocks found")
    bad = [b for b in blocks if not 0 <= b < n_layers]
    if bad:
        raise UsageError(f"lora_blocks {bad} out of range: encoder '{name}' has blocks 0..{n_layers - 1}")


class CoACTModel(nn.Module):
    """Student (LoRA), teacher (EMA, optional) and prototype classifier over ``num_classes`` classes."""

    def __init__(self, encoder: nn.Module, num_classes: int, cfg: CoACTConfig, *, lora: bool = True,
                 teacher: bool = True):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.cfg = cfg
        self.is_text = getattr(encoder, "main_input_name", "input_ids") == "input_ids"
        self.pooling = cfg.pooling if cfg.pooling != "auto" else ("mean" if self.is_text else "cls")
        n_layers = encoder.config.num_hidden_layers
        blocks = list(range(n_layers)) if cfg.lora_blocks is None else list(cfg.lora_blocks)
        targets = lora_targets(encoder, cfg)
        _check_lora_targets(encoder, targets, blocks)
        encoder.requires_grad_(False)
        self.teacher = copy.deepcopy(encoder).requires_grad_(False) if teacher else None
        if lora:
            # full module names: peft's layers_to_transform misses top-level blocks ("layers.0." in ViT)
            names = [n for n, m in encoder.named_modules() if _is_linear(m)
                     and n.rsplit(".", 1)[-1] in targets and block_index(n + ".") in blocks]
            lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=names, bias="none")
            try:
                encoder = get_peft_model(encoder, lcfg)
            except ValueError as e:
                raise UsageError(f"encoder cannot be LoRA-wrapped: {str(e).splitlines()[0]}") from None
        self.student = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes, bias=False)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        start = cfg.ft_start_layer
        if cfg.controlled_ft and start is not None:
            start = start + n_layers if start < 0 else start
        self.ft_start = start if cfg.controlled_ft and start is not None and start < n_layers else None
        self._ema_pairs = self._match_teacher() if self.teacher is not None else ([], [])

    # ---- parameters -------------------------------------------------------------------------
    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.student.named_parameters() if "lora_" in n]

    def ft_parameters(self) -> list[nn.Parameter]:
        """Pre-trained weights that controlled fine-tuning unfreezes: blocks >= ft_start, plus heads above them."""
        if self.ft_start is None:
            return []
        out = []
        for n, p in self.student.named_parameters():
            if "lora_" in n or "embeddings" in n:
                continue
            b = block_index(n)
            if b is None or b >= self.ft_start:
                out.append(p)
        return out

    def set_trainable(self, *, lora: bool, classifier: bool, ft: bool) -> None:
        """Freeze everything, then unfreeze the chosen groups (the teacher is never trainable)."""
        self.requires_grad_(False)
        for p in self.lora_parameters():
            p.requires_grad_(lora)
        self.classifier.weight.requires_grad_(classifier)
        for p in self.ft_parameters():
            p.requires_grad_(ft)

    def _match_teacher(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        t_params = dict(self.teacher.named_parameters())
        t_list, s_list = [], []
        for n, p in self.student.named_parameters():
            if "lora_" in n:
                continue
            t_name = student_to_teacher_name(n)
            if t_name not in t_params:
                raise RuntimeError(f"teacher has no parameter matching student's {n}")
            t_list.append(t_params.pop(t_name))
            s_list.append(p)
        if t_params:
            raise RuntimeError(f"student has no parameters matching teacher's {sorted(t_params)[:3]}")
        return t_list, s_list

    def teacher_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher params, name-matched student base params), in the same order."""
        return self._ema_pairs

    def ema_update(self, momentum: float | None = None) -> None:
        """``teacher <- m * teacher + (1 - m) * student_base`` over name-matched weights (part (i))."""
        m = self.cfg.ema_momentum if momentum is None else momentum
        ema_update_(*self._ema_pairs, m)

    # ---- forward ----------------------------------------------------------------------------
    def embed(self, inputs: dict, encoder: nn.Module | None = None) -> torch.Tensor:
        """(B, D) pooled, un-normalised embeddings from ``encoder`` (default: the student)."""
        encoder = self.student if encoder is None else encoder
        if self.is_text:
            out = encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        else:
            out = encoder(pixel_values=inputs["pixel_values"])
        h = out.last_hidden_state  # (B, T, D)
        if self.pooling == "mean":
            mask = inputs["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.pooling == "pooler":
            return out.pooler_output
        return h[:, 0]

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None) -> dict:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        emb = self.embed(inputs)
        return {"embeddings": emb, "logits": self.classifier(emb)}

    def predict_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C) classifier logits with unseen classes at -inf (never predicted, zero probability)."""
        return masked_logits(self.classifier(embeddings), self.seen)

    @torch.no_grad()
    def set_prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Rows of the classes in ``labels`` <- their mean embedding; mark them seen; other rows unchanged."""
        means, present = class_means(embeddings, labels, self.classifier.out_features)
        w = self.classifier.weight
        w[present] = means[present].to(w.dtype)
        self.seen |= present.to(self.seen.device)

    def frozen_copy(self) -> "CoACTModel":
        """A frozen eval-mode copy of student + classifier (no teacher): the session-0 model."""
        teacher, pairs = self.teacher, self._ema_pairs
        self.teacher, self._ema_pairs = None, ([], [])
        try:
            clone = copy.deepcopy(self)
        finally:
            self.teacher, self._ema_pairs = teacher, pairs
        return clone.requires_grad_(False).eval()
