"""CoACT on the embedded all-MiniLM-L6-v2 (integration): LoRA placement, step-0 equality, one loss step."""

from __future__ import annotations

import copy

import pytest
import torch

from contrastkit.alignment.coact_config import CoACTConfig
from contrastkit.alignment.coact_data import Collator
from contrastkit.alignment.coact_model import CoACTModel

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

TEXTS = ["what is my account balance", "how much money do i have in checking", "set an alarm for 7 am",
         "wake me up at six tomorrow", "play some jazz music", "put on my workout playlist"]


def test_minilm_coact_wiring(minilm, tmp_path):
    from transformers import TrainingArguments

    from contrastkit.alignment.coact_trainer import CoACTTrainer

    encoder, tok = minilm
    model = CoACTModel(copy.deepcopy(encoder).cpu(), 4, CoACTConfig(ft_start_layer=-1))
    lora = [n for n, p in model.student.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 2 * 6 and all(".query." in n or ".value." in n for n in lora)
    assert model.pooling == "mean" and model.ft_start == 5
    batch = Collator(tok, 32)([{"inputs": t, "labels": i // 2} for i, t in enumerate(TEXTS)])
    model.eval()
    with torch.no_grad():
        h = model.embed(batch)
        assert torch.allclose(h, model.embed(batch, encoder=model.teacher), atol=1e-5)
        ref = encoder.cpu()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        assert torch.allclose(h, (ref * m).sum(1) / m.sum(1), atol=1e-5)
    model.set_prototypes(h, batch["labels"])
    model.set_trainable(lora=True, classifier=True, ft=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    trainer = CoACTTrainer(model=model, args=args, coact=model.cfg)
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    assert torch.isfinite(loss) and set(trainer._coact_metrics) == {"ce", "supcon"}
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n or n == "classifier.weight" for n in grads)
    assert (batch["labels"] == model.predict_logits(h).argmax(-1)).float().mean() >= 0.5
