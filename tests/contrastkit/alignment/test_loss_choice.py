"""Trainer level: ``loss: hinge`` really trains on SLiC's hinge (with the config's beta), checked against a slow
from-scratch reference (one unpadded sequence at a time, full log_softmax), sharing no code with the package."""

from __future__ import annotations

import random

import pytest
import torch

datasets = pytest.importorskip("datasets")
from peft import LoraConfig  # noqa: E402

from contrastkit.alignment.configs import ContrastDPOConfig  # noqa: E402
from contrastkit.alignment.trainers import ContrastDPOTrainer  # noqa: E402

WORDS = "the cat dog bird saw a red blue king queen river city".split()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pairs(n=4, seed=0):
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return datasets.Dataset.from_list(
        [{"prompt": words(4), "chosen": " " + words(rng.randint(2, 4)), "rejected": " " + words(rng.randint(2, 4))}
         for _ in range(n)])


def slow_logp(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return logp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]].sum()


def test_hinge_loss_choice_reaches_the_trainer_with_its_beta(tmp_path):
    from contrastkit.testing import tiny_llama, tiny_tokenizer

    beta = 0.5
    args = ContrastDPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                             bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False,
                             disable_tqdm=True, loss="hinge", beta=beta)
    trainer = ContrastDPOTrainer(model=tiny_llama(init_range=0.3), args=args, train_dataset=pairs(),
                                 processing_class=tiny_tokenizer(),
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])
    model.train()
    at_reference = trainer.compute_loss(model, dict(batch))
    assert at_reference.item() == pytest.approx(1.0, abs=1e-6)  # policy == reference: max(0, 1 - 0) (DPO: ln 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    loss = trainer.compute_loss(model, dict(batch))
    half = batch["input_ids"].shape[0] // 2
    terms = []
    for i in range(half):
        seqs = []
        for r in (i, half + i):
            n = int(batch["attention_mask"][r].sum())
            plen = int(batch["completion_mask"][r].argmax())
            seqs.append((batch["input_ids"][r, :plen].tolist(), batch["input_ids"][r, plen:n].tolist()))
        (prompt, chosen), (_, rejected) = seqs
        pc, pr = slow_logp(model, prompt, chosen), slow_logp(model, prompt, rejected)
        with torch.no_grad(), model.disable_adapter():
            rc, rr = slow_logp(model, prompt, chosen), slow_logp(model, prompt, rejected)
        terms.append(torch.relu(1 - beta * ((pc - rc) - (pr - rr))))
    expected = torch.stack(terms).mean()
    assert 0 < expected.item() and abs(expected.item() - 1.0) > 1e-2  # the adapter moved the margins
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def slow_token_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return logp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]]  # (len(completion),)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_treg_regularizer_value_at_trainer_level_follows_treg_token_reduction(tmp_path, reduction):
    """loss(alpha) - loss(0) = alpha * mean_i w_i * (L(y_w) + L(y_l)), L(y) = -sum_t rhat_t * beta * (log pi - log
    pi_ref)(y_t), divided by the response length for 'mean'; w_i = sigma(r(y_l) - r(y_w)). All from scratch."""
    from contrastkit.alignment.configs import TREGConfig
    from contrastkit.alignment.trainers import TREGTrainer
    from contrastkit.testing import tiny_llama, tiny_tokenizer

    beta, alpha = 0.3, 0.5
    args = TREGConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
                      report_to="none", save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, beta=beta,
                      treg_alpha=alpha, treg_token_reduction=reduction, treg_rewards="eager")
    trainer = TREGTrainer(model=tiny_llama(init_range=0.3), args=args, train_dataset=pairs(),
                          processing_class=tiny_tokenizer(),
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = trainer.model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    examples = [trainer.train_dataset[i] for i in (0, 1)]
    batch = trainer.data_collator(examples)
    model.train()
    with torch.no_grad():
        got = {}
        for a in (alpha, 0.0):
            trainer.args.treg_alpha = a
            got[a] = trainer.compute_loss(model, dict(batch))
        regs = []
        for ex in examples:
            prompt = list(ex["prompt_ids"])
            per_col, seq_reward = {}, {}
            for col in ("chosen", "rejected"):
                comp = list(ex[f"{col}_ids"])
                pol = slow_token_logps(model, prompt, comp)
                with model.disable_adapter():
                    ref = slow_token_logps(model, prompt, comp)
                rhat = torch.tensor(ex[f"{col}_token_rewards"])
                assert rhat.shape == pol.shape
                l_reg = -(rhat * beta * (pol - ref)).sum()
                per_col[col] = l_reg / len(comp) if reduction == "mean" else l_reg
                seq_reward[col] = beta * (pol - ref).sum()
            w = torch.sigmoid(seq_reward["rejected"] - seq_reward["chosen"])
            regs.append(w * (per_col["chosen"] + per_col["rejected"]))
        expected = alpha * torch.stack(regs).mean()
    assert expected.abs() > 1e-4
    torch.testing.assert_close(got[alpha] - got[0.0], expected, atol=2e-6, rtol=2e-4)
