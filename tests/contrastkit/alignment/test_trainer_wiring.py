"""Trainer-level wiring of HyPO / T-REG / DPO (issue 12): each trainer's loss and gradient against slow,
from-scratch references written here (full log_softmax, one unpadded sequence at a time), sharing no
code with the package beyond the trainer under test."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

datasets = pytest.importorskip("datasets")
from peft import LoraConfig  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from contrastkit.alignment.configs import ContrastDPOConfig, HyPOConfig, TREGConfig  # noqa: E402
from contrastkit.alignment.trainers import ContrastDPOTrainer, HyPOTrainer, TREGTrainer  # noqa: E402
from contrastkit.testing import softmax_sampling_reference  # noqa: E402

WORDS = "the cat dog bird saw a red blue king queen river city".split()
BETA = 0.1

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pairs(n=8, seed=0):
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return datasets.Dataset.from_list(
        [{"prompt": words(5 if i % 2 else 3), "chosen": " " + words(rng.randint(2, 5)),
          "rejected": " " + words(rng.randint(2, 5))} for i in range(n)])


def make(trainer_cls, cfg_cls, tmp_path, *, steps=2, model=None, tok=None, peft=True, data=None,
         lora_targets=("q_proj", "v_proj"), **extra):
    from contrastkit.testing import tiny_llama, tiny_tokenizer

    if cfg_cls is TREGConfig:
        extra.setdefault("treg_rewards", "eager")  # these tests read the precomputed reward columns
    args = cfg_cls(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2, use_cpu=True,
                   bf16=False, report_to="none", logging_steps=1, learning_rate=5e-3, save_strategy="no",
                   gradient_checkpointing=False, seed=0, disable_tqdm=True, beta=BETA, **extra)
    kwargs = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=list(lora_targets))} if peft else {}
    return trainer_cls(model=model if model is not None else tiny_llama(init_range=0.3), args=args,
                       train_dataset=data if data is not None else pairs(),
                       processing_class=tok or tiny_tokenizer(), **kwargs)


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def perturb_lora(model, std=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def slow_logp(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """sum_t log softmax(model(prompt + completion))[t, y_t] over the completion: one sequence, no padding."""
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    pos = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    return logp[pos, ids[0, len(prompt):]].sum()


def split_batch(batch):
    """(prompt, chosen, rejected) token lists per pair from trl's right-padded [chosen; rejected] batch."""
    half = batch["input_ids"].shape[0] // 2
    out = []
    for i in range(half):
        rows = []
        for r in (i, half + i):
            n = int(batch["attention_mask"][r].sum())
            plen = int(batch["completion_mask"][r].argmax())
            rows.append((batch["input_ids"][r, :plen].tolist(), batch["input_ids"][r, plen:n].tolist()))
        out.append((rows[0][0], rows[0][1], rows[1][1]))
    return out


def slow_dpo(model, batch):
    terms = []
    for prompt, chosen, rejected in split_batch(batch):
        pc, pr = slow_logp(model, prompt, chosen), slow_logp(model, prompt, rejected)
        with torch.no_grad(), model.disable_adapter():
            rc, rr = slow_logp(model, prompt, chosen), slow_logp(model, prompt, rejected)
        terms.append(-F.logsigmoid(BETA * ((pc - rc) - (pr - rr))))
    return torch.stack(terms).mean()


def kept(tokens: list[int], eos: int) -> list[int]:
    """Tokens up to and including the first EOS (all of them when there is none)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def slow_loo_surrogate(model, prompts, samples, k, eos):
    """HyPO's leave-one-out surrogate from scratch: mean over prompts of mean_j (kl_j - mean_{i!=j} kl_i) * logpi_j."""
    per_prompt = []
    for i, prompt in enumerate(prompts):
        pol, ref = [], []
        for row in samples[i * k:(i + 1) * k]:
            comp = kept(row, eos)
            pol.append(slow_logp(model, prompt, comp))
            with torch.no_grad(), model.disable_adapter():
                ref.append(slow_logp(model, prompt, comp))
        pol, ref = torch.stack(pol), torch.stack(ref)
        kl = (pol - ref).detach()
        base = torch.stack([torch.cat([kl[:j], kl[j + 1:]]).mean() for j in range(k)])
        per_prompt.append(((kl - base) * pol).mean())
    return torch.stack(per_prompt).mean()


# ---------------------------------------------------------------------------------------------- MoE


def tiny_mixtral(tok):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tok), num_local_experts=4, num_experts_per_tok=2,
                        router_aux_loss_coef=0.05, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                        initializer_range=0.3)
    torch.manual_seed(0)
    return MixtralForCausalLM(cfg)


def test_moe_aux_loss_is_added_in_all_three_trainers_as_trl_adds_it(tmp_path):
    """Tiny Mixtral + LoRA: our DPO equals trl's DPO exactly (losses and weights); HyPO (lambda 0) and T-REG
    (alpha 0) give trl's losses too, so the router load-balancing loss is in all three."""
    from contrastkit.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    runs = {}
    for name, cls, cfg, extra in [("trl", DPOTrainer, DPOConfig, {}), ("dpo", ContrastDPOTrainer, ContrastDPOConfig, {}),
                                  ("hypo", HyPOTrainer, HyPOConfig, {"hypo_lambda": 0.0}),
                                  ("treg", TREGTrainer, TREGConfig, {"treg_alpha": 0.0})]:
        trainer = make(cls, cfg, tmp_path / name, steps=3, model=tiny_mixtral(tok), tok=tok, **extra)
        trainer.train()
        runs[name] = trainer
    trl_losses = losses(runs["trl"])
    aux = [h["aux_loss"] for h in runs["trl"].state.log_history if "loss" in h]
    assert all(a > 0 for a in aux)
    assert trl_losses[0] == pytest.approx(math.log(2) + 0.05 * aux[0], abs=1e-5)  # aux really is in trl's loss
    for name in ("dpo", "hypo", "treg"):
        assert losses(runs[name]) == trl_losses, name
    for (n1, p1), (n2, p2) in zip(runs["dpo"].model.named_parameters(), runs["trl"].model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


# -------------------------------------------------------------------------------------------- HyPO


class FixedGenerate:
    """Stands in for ``model.generate``: returns fixed completions (one that ends in EOS before the cap, then
    pads, as generate pads; one that runs to the cap without EOS), and records the generation config."""

    def __init__(self, completions):
        self.completions = torch.tensor(completions)
        self.configs = []

    def __call__(self, input_ids, attention_mask, generation_config, **_):
        self.configs.append(generation_config)
        reps = input_ids.shape[0] // self.completions.shape[0]
        return torch.cat([input_ids, self.completions.repeat(reps, 1)], dim=1)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_hypo_step_loss_and_gradient_equal_dpo_plus_lambda_surrogate_by_hand(tmp_path, lam):
    trainer = make(HyPOTrainer, HyPOConfig, tmp_path, hypo_lambda=lam, hypo_num_samples=2, hypo_max_new_tokens=5,
                   hypo_top_p=0.95)
    tok, model = trainer.processing_class, trainer.model
    eos, pad = tok.eos_token_id, tok.pad_token_id
    perturb_lora(model)
    # per prompt: one ends in EOS before the cap (after a generated pad id, an ordinary token there), one does not
    samples = [[40, pad, 41, eos, pad], [50, 51, 52, 53, 54]]
    model.generate = FixedGenerate(samples)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])  # prompts of 3 and 5 words
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(model, dict(batch))
    grads = torch.autograd.grad(loss, params)

    prompts = [p for p, _, _ in split_batch(batch)]
    assert len({len(p) for p in prompts}) == 2  # the online batch is left-padded
    dpo = slow_dpo(model, batch)
    surrogate = slow_loo_surrogate(model, prompts, samples * 2, 2, eos)
    expected = dpo + lam * surrogate
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-3)
    metrics = trainer._metrics["train"]
    assert metrics["hypo/dpo_loss"][-1] == pytest.approx(dpo.item(), abs=1e-5)
    assert metrics["hypo/kl_loss"][-1] == pytest.approx(lam * surrogate.item(), rel=1e-5)
    assert metrics["hypo/gen_len"][-1] == pytest.approx((4 + 5) / 2)  # EOS counts, pads after it do not
    assert metrics["hypo/eos_rate"][-1] == pytest.approx(0.5)
    gen = model.generate.configs[-1]
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (True, 1.0, 0.95, 0, 5)
    assert (gen.repetition_penalty, gen.no_repeat_ngram_size, gen.num_beams) == (1.0, 0, 1)


def test_hypo_samples_come_from_the_policy_at_hypo_temperature(tmp_path):
    """The trainer's online samples equal, draw for draw, plain softmax(logits / T) sampling from the policy
    (adapter on) with T = hypo_temperature; the reference or T = 1 would give other samples."""
    from contrastkit.alignment.trainers import online_kl_term

    trainer = make(HyPOTrainer, HyPOConfig, tmp_path, hypo_num_samples=4, hypo_max_new_tokens=6, hypo_temperature=0.6)
    model, tok = trainer.model, trainer.processing_class
    perturb_lora(model, std=1.0)
    captured = []
    real = trainer._sampler.sample
    trainer._sampler.sample = lambda *a, **kw: captured.append(real(*a, **kw)) or captured[-1]
    batch = trainer.data_collator([trainer.train_dataset[0]])
    model.train()
    torch.manual_seed(7)
    online_kl_term(trainer, batch)
    got = captured[-1][0]
    prompt = split_batch(batch)[0][0]
    model.eval()
    want = {}
    for name, temp, ctx in (("policy", 0.6, torch.enable_grad()), ("reference", 0.6, model.disable_adapter()),
                            ("T=1", 1.0, torch.enable_grad())):
        torch.manual_seed(7)
        with ctx:
            want[name] = softmax_sampling_reference(model, prompt, 4, 6, temp, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(got, want["policy"])
    assert not torch.equal(want["reference"], want["policy"]) and not torch.equal(want["T=1"], want["policy"])


def test_hypo_samples_contain_the_token_the_adapter_makes_certain(tmp_path):
    """A LoRA on the embeddings that adds c * (lm_head row of token X) to every input embedding makes X
    near-certain for the policy: the online samples are all X; the reference (adapter off) gives no X."""
    from contrastkit.alignment.trainers import online_kl_term

    trainer = make(HyPOTrainer, HyPOConfig, tmp_path, hypo_num_samples=3, hypo_max_new_tokens=5,
                   lora_targets=("embed_tokens", "q_proj"))
    model, tok = trainer.model, trainer.processing_class
    head = model.get_base_model().lm_head.weight.detach()
    x = int(head.norm(dim=1).argmax())
    emb = next(m for n, m in model.named_modules() if n.endswith("embed_tokens") and hasattr(m, "lora_embedding_A"))
    with torch.no_grad():
        emb.lora_embedding_A["default"].fill_(1.0)  # (r, V): every token maps to the same r-vector
        emb.lora_embedding_B["default"].zero_()
        emb.lora_embedding_B["default"][:, 0] = 1e3 * head[x] / head[x].norm()  # (D, r)
    captured = []
    real = trainer._sampler.sample
    trainer._sampler.sample = lambda *a, **kw: captured.append(real(*a, **kw)) or captured[-1]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])
    model.train()
    torch.manual_seed(0)
    online_kl_term(trainer, batch)
    samples = captured[-1][0]
    assert samples.shape == (6, 5) and bool((samples == x).all())
    with torch.no_grad(), model.disable_adapter():
        torch.manual_seed(0)
        ref = softmax_sampling_reference(model, split_batch(batch)[0][0], 6, 5, 1.0, tok.eos_token_id, tok.pad_token_id)
    assert not bool((ref == x).any())


# ------------------------------------------------------------------------------------------- T-REG


class GradOfTokenLogps:
    """Forward hook keeping the policy's per-token log-probs (trl's fused head output) with their gradient."""

    def __init__(self, model):
        self.log_probs = None
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if kwargs.get("fused_lm_head") and self.log_probs is None:
            output.log_probs.retain_grad()
            self.log_probs = output.log_probs


def test_treg_regularizer_gradient_per_token_is_minus_w_beta_rhat_at_the_right_positions(tmp_path):
    """d(loss_alpha - loss_0)/d log pi(token at position p) = -alpha * w_i * beta * rhat / B, where rhat is the
    reward precomputed for that response token (placed here by hand from prompt_ids/chosen_ids) and
    w_i = sigma(r(y_l) - r(y_w)) is computed from scratch."""
    alpha = 0.5
    trainer = make(TREGTrainer, TREGConfig, tmp_path, treg_alpha=alpha)
    model = trainer.model
    perturb_lora(model)
    examples = [trainer.train_dataset[i] for i in (0, 1)]
    batch = trainer.data_collator(examples)
    model.train()
    grads = {}
    for a in (alpha, 0.0):
        trainer.args.treg_alpha = a
        hook = GradOfTokenLogps(model)
        trainer.compute_loss(model, dict(batch)).backward()
        hook.handle.remove()
        grads[a] = hook.log_probs.grad.clone()
        model.zero_grad()
    reg_grad = grads[alpha] - grads[0.0]  # (2B, L-1)

    B = len(examples)
    expected = torch.zeros_like(reg_grad)
    for i, (ex, (prompt, chosen, rejected)) in enumerate(zip(examples, split_batch(batch))):
        with torch.no_grad():
            r = []
            for comp in (chosen, rejected):
                pol = slow_logp(model, prompt, comp)
                with model.disable_adapter():
                    r.append(BETA * (pol - slow_logp(model, prompt, comp)))
        w = torch.sigmoid(r[1] - r[0])
        for row, col in ((i, "chosen"), (B + i, "rejected")):
            start = len(ex["prompt_ids"])
            for j, rhat in enumerate(ex[f"{col}_token_rewards"]):
                expected[row, start + j - 1] = -alpha * w * BETA * rhat / B  # log_probs[t] scores token t+1
    assert expected.abs().sum() > 0
    torch.testing.assert_close(reg_grad, expected, atol=1e-7, rtol=1e-4)


def test_treg_keep_end_rewards_follow_the_kept_tokens(tmp_path):
    """The issue's example: prompt of 2, response of 3 with rewards 0.1, 0.2, 0.3, max_length 4, keep_end:
    trl keeps the last 4 ids, so the rewards are [0, 0.1, 0.2, 0.3] beside completion_mask [0, 1, 1, 1]."""
    from contrastkit.alignment.token_rewards import TokenRewardCollator

    ex = {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10, 11, 12],
          "chosen_token_rewards": [0.1, 0.2, 0.3], "rejected_token_rewards": [-0.1, -0.2, -0.3]}
    end = TokenRewardCollator(pad_token_id=0, max_length=4, truncation_mode="keep_end")([ex])
    assert end["input_ids"].tolist() == [[6, 7, 8, 9], [6, 10, 11, 12]]
    assert end["completion_mask"].tolist() == [[0, 1, 1, 1]] * 2
    torch.testing.assert_close(end["token_rewards"], torch.tensor([[0, 0.1, 0.2, 0.3], [0, -0.1, -0.2, -0.3]]))
    start = TokenRewardCollator(pad_token_id=0, max_length=4, truncation_mode="keep_start")([ex])
    torch.testing.assert_close(start["token_rewards"], torch.tensor([[0, 0, 0.1, 0.2], [0, 0, -0.1, -0.2]]))


def test_treg_trainer_with_keep_end_scores_every_kept_response_token(tmp_path):
    """Trainer level: with keep_end and a max_length that cuts the prompts, every completion token in the batch
    carries its reference-computed reward (none left at 0 by a keep_start cut)."""
    trainer = make(TREGTrainer, TREGConfig, tmp_path, treg_alpha=0.5, max_length=6, truncation_mode="keep_end")
    ex = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(ex)
    assert any(len(e["prompt_ids"]) + len(e["chosen_ids"]) > 6 for e in ex)  # some rows are really cut
    for r, e in enumerate(ex):  # chosen rows
        rewards = batch["token_rewards"][r][batch["completion_mask"][r] == 1]
        torch.testing.assert_close(rewards, torch.tensor(e["chosen_token_rewards"][-len(rewards):]))
        assert bool((rewards != 0).all())
    trainer.train()
    assert trainer.state.global_step == 2


def test_treg_reward_cache_is_keyed_by_the_reference_adapter(tmp_path):
    """Training on top of a loaded adapter makes that adapter the reference: a rerun in the same output_dir
    with another adapter must recompute the rewards; the same adapter reuses them."""
    from peft import get_peft_model

    from contrastkit.testing import tiny_llama

    def peft_model(seed):
        m = get_peft_model(tiny_llama(init_range=0.3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
        perturb_lora(m, std=1.0, seed=seed)
        return m

    first = make(TREGTrainer, TREGConfig, tmp_path, model=peft_model(1), peft=False)
    same = make(TREGTrainer, TREGConfig, tmp_path, model=peft_model(1), peft=False)
    other = make(TREGTrainer, TREGConfig, tmp_path, model=peft_model(2), peft=False)
    assert [t.treg_cache["train"]["cached"] for t in (first, same, other)] == [False, True, False]
    assert other.train_dataset["chosen_token_rewards"] != first.train_dataset["chosen_token_rewards"]
    fresh = make(TREGTrainer, TREGConfig, tmp_path / "fresh", model=peft_model(2), peft=False)
    assert fresh.train_dataset["chosen_token_rewards"] == other.train_dataset["chosen_token_rewards"]


@pytest.mark.integration
def test_treg_better_template_containing_the_response_gives_positive_rewards(tmp_path):
    """SmolLM2: a 'better' context that quotes the chosen response verbatim (the 'worse' one does not) makes
    the reference copy it, so r-hat > 0 on its tokens (mean and most tokens)."""
    from contrastkit.models import load_model

    model, tok = load_model("smollm2", purpose="train")
    response = " The quick brown fox jumps over the lazy dog near the old river bank."
    data = datasets.Dataset.from_list([{"prompt": "Write one sentence about a fox.", "chosen": response,
                                        "rejected": " Foxes are animals."}])
    better = f"Repeat this sentence exactly:{response}\n\n{{prompt}}"
    worse = "Write something unrelated.\n\n{prompt}"
    trainer = make(TREGTrainer, TREGConfig, tmp_path / "a", model=model, tok=tok, data=data, steps=1,
                   treg_better_template=better, treg_worse_template=worse, max_length=128)
    rhat = torch.tensor(trainer.train_dataset["chosen_token_rewards"][0])
    assert rhat.mean() > 0.05 and (rhat > 0).float().mean() > 0.6


def test_treg_lazy_rewards_equal_eager_and_cover_only_the_rows_seen(tmp_path):
    """Lazy rewards: the same training as the eager precompute (losses equal to fp tolerance), only the rows the
    run draws are computed (2 steps x 2 rows of 8), and a rerun in the same output_dir reads them back."""
    eager = make(TREGTrainer, TREGConfig, tmp_path / "e", treg_alpha=0.5, treg_rewards="eager")
    eager.train()
    lazy = make(TREGTrainer, TREGConfig, tmp_path / "l", treg_alpha=0.5, treg_rewards="lazy")
    assert "chosen_token_rewards" not in lazy.train_dataset.column_names
    lazy.train()
    assert losses(lazy) == pytest.approx(losses(eager), rel=1e-5)
    assert [h["treg/reg"] for h in lazy.state.log_history if "loss" in h] == pytest.approx(
        [h["treg/reg"] for h in eager.state.log_history if "loss" in h], rel=1e-4, abs=1e-7)
    info = lazy.treg_cache["train"]
    assert info["mode"] == "lazy" and info["rows_computed"] == 4 and info["rows_from_cache"] == 0
    again = make(TREGTrainer, TREGConfig, tmp_path / "l", treg_alpha=0.5, treg_rewards="lazy")
    assert again.treg_cache["train"]["rows_from_cache"] == 4 and again.treg_cache["train"]["cached"] is True
    stored = again._lazy[0].rewards
    by_prompt = {tuple(r["prompt_ids"]) + tuple(r["chosen_ids"]): r["chosen_token_rewards"] for r in eager.train_dataset}
    for i, (chosen, _) in stored.items():
        row = again.train_dataset[int(i)]
        assert chosen == pytest.approx(by_prompt[tuple(row["prompt_ids"]) + tuple(row["chosen_ids"])], abs=1e-6)


def test_treg_trainer_rewards_equal_a_from_scratch_contrastive_score(tmp_path):
    """The trainer's precomputed rewards == sigma(log p_ref(y_t | better, y_<t) - log p_ref(y_t | worse, y_<t)) - 0.5
    computed here one sequence at a time with a full log_softmax on the reference (adapter off), for every
    chosen and rejected token: catches swapped contexts and rewards shifted by a position."""
    better, worse = "Answer well and kindly:\n{prompt}", "Answer badly:\n{prompt}"
    trainer = make(TREGTrainer, TREGConfig, tmp_path, treg_better_template=better, treg_worse_template=worse)
    model, tok = trainer.model, trainer.processing_class
    perturb_lora(model)  # the policy differs from the reference: rewards must come from the reference
    for row in (trainer.train_dataset[i] for i in range(3)):
        ctx = {t: tok(t.replace("{prompt}", row["prompt"]))["input_ids"] for t in (better, worse)}
        for col in ("chosen", "rejected"):
            ids = list(row[f"{col}_ids"])
            expected = []
            with torch.no_grad(), model.disable_adapter():
                lp = {}
                for t, c in ctx.items():
                    seq = torch.tensor([c + ids])
                    logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1].float(), -1)
                    lp[t] = logp[torch.arange(len(c) - 1, seq.shape[1] - 1), seq[0, len(c):]]
            expected = torch.sigmoid(lp[better] - lp[worse]) - 0.5
            got = torch.tensor(row[f"{col}_token_rewards"])
            torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
            assert expected.abs().max() > 1e-3
