"""DPO / HyPO / T-REG trainers on a tiny random Llama with LoRA (tier b/c), plus the trl pin."""

from __future__ import annotations

import hashlib
import inspect
import math
import random

import pytest
import torch

datasets = pytest.importorskip("datasets")
from peft import LoraConfig  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from contrastkit.alignment.configs import ContrastDPOConfig, HyPOConfig, TREGConfig  # noqa: E402
from contrastkit.alignment.trainers import ContrastDPOTrainer, HyPOTrainer, TREGTrainer  # noqa: E402
from contrastkit.errors import UsageError  # noqa: E402

WORDS = "the cat dog bird saw a red blue king queen river city".split()

# sha256 of trl 1.16.0's DPOTrainer._compute_loss / compute_loss source. Our trainers rely on
# _compute_loss calling the policy then the reference with fused_lm_head=True and on the batch
# layout [chosen; rejected]; if trl changes either method this fails and the hook must be re-checked.
PINNED = {
    "_compute_loss": "5e58a1699e0d76cd",
    "compute_loss": "c453890e84beb4cb",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sha(fn) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


def test_trl_methods_we_override_are_pinned():
    import trl

    assert trl.__version__.startswith("1.16."), trl.__version__
    sig = inspect.signature(DPOTrainer.compute_loss)
    assert list(sig.parameters) == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert {name: _sha(getattr(DPOTrainer, name)) for name in PINNED} == PINNED


def pairs(n=8, seed=0):
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return datasets.Dataset.from_list(
        [{"prompt": words(5), "chosen": " " + words(rng.randint(2, 5)), "rejected": " " + words(rng.randint(2, 5))}
         for _ in range(n)])


def make(trainer_cls, cfg_cls, tmp_path, *, steps=2, peft=True, **extra):
    from contrastkit.testing import tiny_llama, tiny_tokenizer

    if cfg_cls is TREGConfig:
        extra.setdefault("treg_rewards", "eager")  # these tests read the precomputed reward columns
    args = cfg_cls(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2, use_cpu=True,
                   bf16=False, report_to="none", logging_steps=1, learning_rate=5e-3, save_strategy="no",
                   gradient_checkpointing=False, seed=0, disable_tqdm=True, **extra)
    kwargs = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])} if peft else {}
    return trainer_cls(model=tiny_llama(init_range=0.3), args=args, train_dataset=pairs(), processing_class=tiny_tokenizer(),
                       **kwargs)


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_our_dpo_equals_plain_trl_dpo_exactly(tmp_path):
    ours = make(ContrastDPOTrainer, ContrastDPOConfig, tmp_path / "a", steps=3)
    ours.train()
    plain = make(DPOTrainer, DPOConfig, tmp_path / "b", steps=3)
    plain.train()
    assert losses(ours) == losses(plain)
    assert losses(ours)[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B=0: policy == reference
    for (n1, p1), (n2, p2) in zip(ours.model.named_parameters(), plain.model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_hypo_lambda_zero_is_dpo_and_never_samples(tmp_path):
    class Boom:
        def sample(self, *a, **k):
            raise AssertionError("sampled with lambda=0")

    hypo = make(HyPOTrainer, HyPOConfig, tmp_path / "h", hypo_lambda=0.0)
    hypo._sampler = Boom()
    hypo.train()
    dpo = make(ContrastDPOTrainer, ContrastDPOConfig, tmp_path / "d")
    dpo.train()
    assert losses(hypo) == losses(dpo)


def test_hypo_step0_kl_zero_then_trains_and_logs(tmp_path):
    trainer = make(HyPOTrainer, HyPOConfig, tmp_path, steps=2, hypo_lambda=1.0, hypo_num_samples=3,
                   hypo_max_new_tokens=6)
    before = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["hypo/kl"] == 0.0 and logs[0]["hypo/surrogate"] == 0.0
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[0]["hypo/dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[1]["hypo/kl"] != 0.0  # policy moved off the reference
    assert 1 <= logs[0]["hypo/gen_len"] <= 6
    for key in ("hypo/kl_per_token", "hypo/eos_rate", "hypo/sample_seconds", "rewards/accuracies"):
        assert key in logs[0]
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_hypo_online_term_matches_unpadded_reference(tmp_path):
    """The trainer's online term (left-padded batch, fused head) == a slow per-sample reference:
    each sample scored alone, unpadded, with a full log_softmax; same value and same gradient."""
    from contrastkit.alignment.sampler import completion_mask_until_eos
    from contrastkit.alignment.trainers import online_kl_term

    trainer = make(HyPOTrainer, HyPOConfig, tmp_path, hypo_num_samples=3, hypo_max_new_tokens=5)
    with torch.no_grad():  # move the adapter off zero so KL != 0
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    captured = {}
    real = trainer._sampler.sample
    trainer._sampler.sample = lambda *a, **k: captured.setdefault("c", real(*a, **k))
    real_generate, eos, pad = trainer.model.generate, trainer.processing_class.eos_token_id, trainer.processing_class.pad_token_id

    def generate_with_an_early_eos(input_ids, **kw):  # real samples, but rows 0 and 4 end in EOS at step 2
        out = real_generate(input_ids=input_ids, **kw)
        out = torch.cat([out, torch.full((out.shape[0], 5 - (out.shape[1] - input_ids.shape[1])), pad)], dim=1)
        for row in (0, 4):
            out[row, input_ids.shape[1] + 1] = eos
            out[row, input_ids.shape[1] + 2:] = pad
        return out

    trainer.model.generate = generate_with_an_early_eos
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 3)])  # prompts of different lengths
    trainer.model.train()
    params = [p for n, p in trainer.model.named_parameters() if p.requires_grad]
    torch.manual_seed(0)
    term = online_kl_term(trainer, batch)
    grads = torch.autograd.grad(term, params)

    tok, k, (comps, _) = trainer.processing_class, 3, captured["c"]
    keep = completion_mask_until_eos(comps, tok.eos_token_id).bool()  # up to and including the first EOS
    ended = (comps == eos).any(dim=1)
    assert ended.any() and not ended.all()  # the EOS path and the cap path are both run
    assert keep[0].tolist() == [True, True, False, False, False]
    half = batch["input_ids"].shape[0] // 2
    pol, ref = [], []
    for row in range(comps.shape[0]):
        i = row // k
        plen = int(batch["completion_mask"][i].argmax())
        ids = torch.cat([batch["input_ids"][i, :plen], comps[row][keep[row]]])[None]
        for store, ctx in ((pol, torch.enable_grad()), (ref, trainer.model.disable_adapter())):
            with ctx:
                logp = torch.log_softmax(trainer.model(input_ids=ids).logits[0, :-1].float(), -1)
            store.append(logp[torch.arange(plen - 1, ids.shape[1] - 1), ids[0, plen:]].sum())
    pol, ref = torch.stack(pol).view(half, k), torch.stack(ref).view(half, k).detach()
    kl = (pol - ref).detach()
    baseline = (kl.sum(1, keepdim=True) - kl) / (k - 1)
    expected = ((kl - baseline) * pol).mean(1).mean()
    assert kl.abs().sum() > 0
    torch.testing.assert_close(term, expected, atol=1e-4, rtol=1e-4)
    assert trainer._metrics["train"]["hypo/kl"][-1] == pytest.approx(kl.mean().item(), abs=1e-4)
    for g, e in zip(grads, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g, e, atol=2e-4, rtol=1e-3)  # fused+padded vs full softmax


def test_treg_alpha_zero_is_dpo_and_rewards_cached(tmp_path):
    treg = make(TREGTrainer, TREGConfig, tmp_path / "t", treg_alpha=0.0)
    assert treg.treg_cache["train"]["cached"] is False
    treg.train()
    dpo = make(ContrastDPOTrainer, ContrastDPOConfig, tmp_path / "d")
    dpo.train()
    assert losses(treg) == losses(dpo)
    again = make(TREGTrainer, TREGConfig, tmp_path / "t", treg_alpha=0.0)  # same output_dir: cache hit
    assert again.treg_cache["train"]["cached"] is True
    assert again.train_dataset["chosen_token_rewards"] == treg.train_dataset["chosen_token_rewards"]


def test_treg_trains_with_regularizer_and_collator_alignment(tmp_path):
    trainer = make(TREGTrainer, TREGConfig, tmp_path, treg_alpha=0.5)
    ex = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(ex)
    assert batch["token_rewards"].shape == batch["input_ids"].shape
    assert torch.all(batch["token_rewards"][batch["completion_mask"] == 0] == 0)
    assert len(ex[0]["chosen_token_rewards"]) == len(ex[0]["chosen_ids"])
    assert any(r != 0 for r in ex[0]["chosen_token_rewards"])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["treg/reg"] == 0.0 and logs[0]["treg/weight"] == 0.5  # step 0: policy == reference
    assert logs[1]["treg/reg"] != 0.0
    assert logs[1]["loss"] == pytest.approx(logs[1]["treg/dpo_loss"] + 0.5 * logs[1]["treg/reg"], rel=1e-5)


@pytest.mark.parametrize("cfg_cls, bad, match", [
    (HyPOConfig, {"hypo_lambda": -0.1}, "hypo_lambda"),
    (HyPOConfig, {"hypo_num_samples": 1}, "hypo_num_samples must be >= 2"),
    (HyPOConfig, {"hypo_sampler": "vlm"}, "Did you mean 'vllm-"),  # issue 15 added vllm-lora/-server/-colocate
    (TREGConfig, {"treg_alpha": -1.0}, "treg_alpha"),
    (TREGConfig, {"treg_better_template": "no placeholder"}, "placeholder"),
    (ContrastDPOConfig, {"loss": "dpoo"}, "Did you mean 'dpo'"),
    (ContrastDPOConfig, {"loss_type": ["ipo"]}, "loss_type"),
])
def test_bad_config_values_raise_usage_error(tmp_path, cfg_cls, bad, match):
    with pytest.raises(UsageError, match=match):
        cfg_cls(output_dir=str(tmp_path), use_cpu=True, report_to="none", **bad)


@pytest.mark.integration
def test_hypo_one_step_on_smollm2_with_lora(tmp_path, shared_data):
    """Real model, real data: one HyPO step on one short HH-RLHF pair (KL 0 and ln 2 at step 0)."""
    from contrastkit.alignment.data import load_preference_data
    from contrastkit.models import load_model

    model, tok = load_model("smollm2", purpose="train")
    data = load_preference_data(shared_data / "hh_rlhf" / "harmless-base_test.jsonl.gz", limit=200, drop_invalid=True)
    size = [len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) for r in data]
    short = sorted(range(len(data)), key=size.__getitem__)
    args = HyPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=1, use_cpu=True, bf16=False,
                      report_to="none", logging_steps=1, save_strategy="no", gradient_checkpointing=False,
                      hypo_lambda=0.5, hypo_num_samples=2, hypo_max_new_tokens=6, max_length=96, disable_tqdm=True)
    trainer = HyPOTrainer(model=model, args=args, train_dataset=data.select(short[:1]), processing_class=tok,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    assert trainer.state.global_step == 1
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["hypo/kl"] == 0.0 and log["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert 1 <= log["hypo/gen_len"] <= 6
