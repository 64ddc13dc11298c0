"""``CoACTTrainer``: one CoACT session as a ``transformers.Trainer`` subclass.

Roy et al., arXiv 2405.16625 (TMLR 2025). The loss (parts (i) and (iii) of the method; research notes 4.1):

* base session: ``ce_w * CE(masked logits(student(view1)), y) + supcon_w * SupCon([z_student, z_teacher], y)``;
* incremental sessions add the frozen session-0 model as a third SupCon view (ours; the code uses the
  session-0 and pre-trained *teachers*) and ``cons_w * MSE(logits[:, S0], logits_session0[:, S0])`` over
  the columns S0 of the classes the session-0 model was trained on (the code uses all columns).

Overrides: ``compute_loss`` and ``create_optimizer`` (SGD, momentum 0.9, Nesterov, two groups:
LoRA + classifier at ``learning_rate``, pre-trained weights unfrozen by controlled fine-tuning at
``learning_rate * encoder_lr_factor``). Callbacks: :class:`EMATeacherCallback` (teacher EMA per
optimizer step; the code does it per forward, which differs only under gradient accumulation) and
:class:`ControlledFinetuneCallback` (unfreezes the top blocks at ``ft_start_epoch``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from contrastkit.alignment.coact_data import augment_images, mask_tokens
from contrastkit.alignment.coact_losses import consistency_loss, masked_logits, supcon_loss

__all__ = ["CoACTTrainer", "EMATeacherCallback", "ControlledFinetuneCallback"]


class EMATeacherCallback(TrainerCallback):
    """After every optimizer step: ``teacher <- m * teacher + (1 - m) * student_base``."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and model.teacher is not None:
            model.ema_update()


class ControlledFinetuneCallback(TrainerCallback):
    """At epoch ``ft_start_epoch`` of the base session, unfreeze the blocks >= ``ft_start_layer``."""

    def __init__(self, start_epoch: int):
        self.start_epoch = start_epoch

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and int(state.epoch or 0) >= self.start_epoch:
            for p in model.ft_parameters():
                p.requires_grad_(True)


class CoACTTrainer(Trainer):
    """Trainer for one CoACT session.

    Args:
        coact: the :class:`~contrastkit.alignment.coact_config.CoACTConfig`.
        base_model: the frozen session-0 model (``CoACTModel.frozen_copy()``) in incremental
            sessions, None in the base session.
        mask_token_id, special_ids: text only, for ``token_mask_prob`` > 0.
        view_seed: seed of the view generator (token masks, image augmentations).
        Other arguments go to ``transformers.Trainer`` (pass ``remove_unused_columns=False``).
    """

    def __init__(self, *args, coact, base_model=None, mask_token_id: int | None = None,
                 special_ids: torch.Tensor | None = None, view_seed: int = 0, **kwargs):
        self.coact = coact
        self.base_model = base_model
        self.mask_token_id = mask_token_id
        self.special_ids = special_ids if special_ids is not None else torch.zeros(0, dtype=torch.long)
        self.view_generator = torch.Generator().manual_seed(view_seed)
        super().__init__(*args, **kwargs)

    def _views(self, model, inputs: dict) -> tuple[dict, dict]:
        if not model.is_text:
            x = inputs["pixel_values"]
            return ({"pixel_values": augment_images(x, self.view_generator)},
                    {"pixel_values": augment_images(x, self.view_generator)})
        view1 = dict(inputs)
        if self.coact.token_mask_prob > 0 and self.mask_token_id is not None:
            view1["input_ids"] = mask_tokens(inputs["input_ids"], inputs["attention_mask"],
                                             prob=self.coact.token_mask_prob, mask_token_id=self.mask_token_id,
                                             special_ids=self.special_ids, generator=self.view_generator)
        return view1, dict(inputs)  # view 2: same tokens, different dropout noise

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.coact
        labels = inputs["labels"]
        x = {k: v for k, v in inputs.items() if k != "labels"}
        view1, view2 = self._views(model, x)
        h_q = model.embed(view1)  # (B, D) student, dropout on
        logits = model.classifier(h_q)  # (B, C)
        loss = cfg.ce_weight * F.cross_entropy(masked_logits(logits, model.seen).float(), labels)
        metrics = {"ce": loss.detach()}
        if cfg.contrastive and model.teacher is not None:
            with torch.no_grad():
                model.teacher.train(cfg.teacher_dropout)
                feats = [F.normalize(h_q, dim=-1), F.normalize(model.embed(view2, encoder=model.teacher), dim=-1)]
                if self.base_model is not None:
                    feats.append(F.normalize(self.base_model.embed(view2), dim=-1))
            con = supcon_loss(torch.stack(feats, dim=1), labels, temperature=cfg.temperature)
            loss = loss + cfg.supcon_weight * con
            metrics["supcon"] = con.detach()
        if self.base_model is not None and cfg.consistency:
            with torch.no_grad():
                base_logits = self.base_model.classifier(self.base_model.embed(view1))
            cons = consistency_loss(logits, base_logits, self.base_model.seen)
            loss = loss + cfg.consistency_weight * cons
            metrics["consistency"] = cons.detach()
        self._coact_metrics = metrics
        return (loss, {"logits": logits}) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            lr = self.args.learning_rate
            fast = model.lora_parameters() + [model.classifier.weight]
            groups = [{"params": fast, "lr": lr}]
            slow = model.ft_parameters()
            if slow:
                groups.append({"params": slow, "lr": lr * self.coact.encoder_lr_factor})
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True,
                                             weight_decay=self.args.weight_decay)
        return self.optimizer
