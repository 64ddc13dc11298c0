"""DPO vs HyPO vs T-REG on the embedded SmolLM2 with LoRA on CPU, against plain trl DPO in the same run.

    .venv/bin/python benchmarks/trainers.py --data hh_rlhf/harmless-base_test.jsonl.gz --steps 30 --json /tmp/pref.json
    .venv/bin/python benchmarks/trainers.py --seeds 0,1,2 --methods trl-dpo,dpo,hypo ...   # mean and spread

For each method (plain ``trl.DPOTrainer`` = ``trl-dpo``, our ``dpo``, ``hypo``, ``treg``) it trains a
fresh LoRA adapter on the same HH-RLHF harmless-base pairs (short rows only, so CPU runs take
minutes), then measures on held-out pairs:

* preference accuracy: share of pairs whose implicit reward ``beta*(log pi - log pi_ref)`` is
  higher for the chosen response (ties count 1/2, so the untrained model scores 0.5);
* KL to the reference: mean ``log pi(y) - log pi_ref(y)`` over samples y ~ pi (temperature 1) of
  held-out prompts (an unbiased estimate of the sequence-level reverse KL; 0 before training);
* mean response length of those samples (tokens, up to and including EOS, capped at
  ``--max_new_tokens``) and the share of samples that ended with EOS within the cap;
* step time (median over steps after the first), T-REG's one-off precompute, HyPO's
  sampling/KL-loss split.

It prints one table with ratios against ``trl-dpo`` and writes everything with ``--json``. With
``--seeds`` every method is run once per seed (data order, LoRA init, sampling) and the table shows
the mean and the spread (sample standard deviation) over seeds; ratios are of the means.

``--data`` defaults to the Hub id ``Anthropic/hh-rlhf`` (resolved to a local copy under
``$CONTRASTKIT_DATA`` when there is one); pass a local harmless-base ``.jsonl.gz`` offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HH = "Anthropic/hh-rlhf"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=HH, help="HH-RLHF harmless-base pairs: a local .jsonl.gz, a datasets folder, "
                   "or a Hub id (default " + HH + ", via $CONTRASTKIT_DATA when set)")
    p.add_argument("--methods", default="trl-dpo,dpo,hypo,treg")
    p.add_argument("--train", type=int, default=64, help="training pairs")
    p.add_argument("--eval", type=int, default=32, help="held-out pairs")
    p.add_argument("--kl_prompts", type=int, default=12, help="held-out prompts sampled for KL / length")
    p.add_argument("--kl_samples", type=int, default=2, help="samples per prompt for KL / length")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max_prompt_tokens", type=int, default=64)
    p.add_argument("--max_response_tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--hypo_lambda", type=float, default=0.1)
    p.add_argument("--hypo_k", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--treg_alpha", type=float, default=0.25)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: run every method once per seed")
    p.add_argument("--json", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="print the mean/spread table of earlier --json runs (e.g. one per seed) and exit")
    return p.parse_args(argv)


def load_pairs(args, tok):
    from contrastkit.alignment.data import load_preference_data
    from contrastkit.io import resolve_data

    ds = load_preference_data(resolve_data(args.data), limit=1500, drop_invalid=True)
    n_p = [len(x) for x in tok(list(ds["prompt"]), add_special_tokens=False)["input_ids"]]
    n_c = [len(x) for x in tok(list(ds["chosen"]), add_special_tokens=False)["input_ids"]]
    n_r = [len(x) for x in tok(list(ds["rejected"]), add_special_tokens=False)["input_ids"]]
    keep = [i for i in range(len(ds)) if n_p[i] <= args.max_prompt_tokens
            and max(n_c[i], n_r[i]) <= args.max_response_tokens and ds[i]["chosen"] != ds[i]["rejected"]]
    need = args.train + args.eval
    if len(keep) < need:
        sys.exit(f"only {len(keep)} short pairs, need {need}")
    return ds.select(keep[: args.train]), ds.select(keep[args.train: need])


class StepTimer:
    def __init__(self):
        self.times, self._t = [], None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, *a, **k):
                timer._t = time.perf_counter()

            def on_step_end(self, *a, **k):
                timer.times.append(time.perf_counter() - timer._t)

        return _CB()


def build_trainer(method, args, train_ds, out_dir):
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from contrastkit.alignment.configs import ContrastDPOConfig, HyPOConfig, TREGConfig
    from contrastkit.alignment.trainers import ContrastDPOTrainer, HyPOTrainer, TREGTrainer
    from contrastkit.models import load_model

    model, tok = load_model("smollm2", purpose="train")
    common = dict(output_dir=out_dir, max_steps=args.steps, per_device_train_batch_size=args.batch,
                  learning_rate=args.lr, lr_scheduler_type="constant", beta=args.beta, use_cpu=True, bf16=False,
                  gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
                  seed=args.seed, max_length=args.max_prompt_tokens + args.max_response_tokens + 2,
                  disable_tqdm=True)
    table = {
        "trl-dpo": (DPOConfig, DPOTrainer, {}),
        "dpo": (ContrastDPOConfig, ContrastDPOTrainer, {}),
        "hypo": (HyPOConfig, HyPOTrainer, dict(hypo_lambda=args.hypo_lambda, hypo_num_samples=args.hypo_k,
                                               hypo_max_new_tokens=args.max_new_tokens)),
        "treg": (TREGConfig, TREGTrainer, dict(treg_alpha=args.treg_alpha)),
    }
    cfg_cls, trainer_cls, extra = table[method]
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    t0 = time.perf_counter()
    trainer = trainer_cls(model=model, args=cfg_cls(**common, **extra), train_dataset=train_ds,
                          processing_class=tok, peft_config=lora)
    return trainer, tok, time.perf_counter() - t0


def _seq_logps(model, batch):
    import torch

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
    return out.log_probs.sum(dim=1)


def preference_accuracy(trainer, eval_ds, batch_size=8):
    """Held-out share of pairs with implicit reward chosen > rejected (ties 1/2), and the mean margin."""
    import torch
    from trl.trainer.utils import use_adapter

    model = trainer.model
    model.eval()
    prepared = trainer._prepare_dataset(eval_ds, trainer.processing_class, trainer.args, "heldout")
    wins, margins = [], []
    for start in range(0, len(prepared), batch_size):
        batch = trainer.data_collator([prepared[i] for i in range(start, min(start + batch_size, len(prepared)))])
        pol = _seq_logps(model, batch)
        with use_adapter(model, adapter_name=None):
            ref = _seq_logps(model, batch)
        c, r = (trainer.beta * (pol - ref)).chunk(2)
        wins.append(torch.where(c > r, 1.0, torch.where(c == r, 0.5, 0.0)))
        margins.append(c - r)
    return torch.cat(wins).mean().item(), torch.cat(margins).mean().item()


def kl_and_length(trainer, eval_ds, n_prompts, k, max_new_tokens, seed):
    """Reverse-KL estimate (mean log pi - log pi_ref over samples from pi) and mean sample length."""
    import torch
    from trl.trainer.utils import use_adapter

    from contrastkit.alignment.sampler import HFSampler
    from contrastkit.alignment.trainers import _sequence_logps

    tok = trainer.processing_class
    model = trainer.model
    model.eval()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in list(eval_ds["prompt"])[:n_prompts]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    comps, cmask = HFSampler(tok.pad_token_id, tok.eos_token_id).sample(model, ids, mask, k=k,
                                                                        max_new_tokens=max_new_tokens)
    seq = torch.cat([ids.repeat_interleave(k, 0), comps], 1)
    attn = torch.cat([mask.repeat_interleave(k, 0), cmask], 1)
    scored = torch.cat([torch.zeros_like(mask).repeat_interleave(k, 0), cmask], 1)
    pol = _sequence_logps(model, seq, attn, scored, grad=False)
    with use_adapter(model, adapter_name=None):
        ref = _sequence_logps(model, seq, attn, scored, grad=False)
    eos_rate = ((comps == tok.eos_token_id) & (cmask == 1)).any(dim=1).float().mean().item()
    return (pol - ref).mean().item(), cmask.sum(1).float().mean().item(), eos_rate


def run_method(method, args, train_ds, eval_ds):
    import torch

    with tempfile.TemporaryDirectory() as out_dir:
        trainer, tok, init_s = build_trainer(method, args, train_ds, out_dir)
        timer = StepTimer()
        trainer.add_callback(timer.callback())
        torch.manual_seed(args.seed)
        trainer.train()
        hist = [h for h in trainer.state.log_history if "loss" in h]
        acc, margin = preference_accuracy(trainer, eval_ds)
        kl, length, eos = kl_and_length(trainer, eval_ds, args.kl_prompts, args.kl_samples, args.max_new_tokens,
                                        args.seed)
        res = {"method": method, "init_seconds": init_s, "step_seconds": statistics.median(timer.times[1:]),
               "train_seconds": sum(timer.times), "losses": [h["loss"] for h in hist],
               "train_reward_acc_last5": statistics.mean(h.get("rewards/accuracies", 0) for h in hist[-5:]),
               "heldout_acc": acc, "heldout_margin": margin, "kl_to_ref": kl, "sample_len": length,
               "sample_eos_rate": eos}
        if method == "hypo":
            res["hypo_sample_seconds"] = statistics.mean(h["hypo/sample_seconds"] for h in hist)
            res["hypo_kl_loss_seconds"] = statistics.mean(h["hypo/kl_loss_seconds"] for h in hist)
            res["hypo_train_kl"] = [h["hypo/kl"] for h in hist]
            res["hypo_gen_len"] = statistics.mean(h["hypo/gen_len"] for h in hist)
        if method == "treg":
            res["treg_precompute_seconds"] = trainer.treg_cache["train"]["seconds"]
            res["treg_reg_last5"] = statistics.mean(h["treg/reg"] for h in hist[-5:])
    return res


def baseline_row(args, eval_ds):
    """The untrained model: accuracy 0.5 (all ties), KL 0, and its sample length."""
    from contrastkit.alignment.configs import ContrastDPOConfig  # noqa: F401 - same loader path as the runs

    with tempfile.TemporaryDirectory() as out_dir:
        a = argparse.Namespace(**{**vars(args), "steps": 1})
        trainer, tok, _ = build_trainer("dpo", a, eval_ds, out_dir)
        acc, margin = preference_accuracy(trainer, eval_ds)
        kl, length, eos = kl_and_length(trainer, eval_ds, args.kl_prompts, args.kl_samples, args.max_new_tokens,
                                        args.seed)
    return {"method": "before", "heldout_acc": acc, "heldout_margin": margin, "kl_to_ref": kl, "sample_len": length,
            "sample_eos_rate": eos}


def aggregate(rows):
    """One row per method: mean of every numeric field over seeds, and ``<field>_sd`` (sample std, 0 for one seed)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        agg = {"method": method, "seeds": [r.get("seed") for r in mine]}
        for key, value in mine[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
                vals = [r[key] for r in mine if r.get(key) is not None]
                agg[key] = statistics.mean(vals)
                agg[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def print_table(rows):
    base = next((r for r in rows if r["method"] == "trl-dpo"), None)
    pm = lambda r, key, f: f"{r[key]:{f}}±{r.get(key + '_sd', 0):{f}}" if r.get(key) is not None else "-"  # noqa: E731
    print(f"\n{'method':<8} {'acc':>13} {'KL to ref':>15} {'len':>11} {'EOS%':>5} {'step s':>13} {'step/trl':>8}")
    for r in rows:
        step = r.get("step_seconds")
        ratio = f"{step / base['step_seconds']:.3f}" if step and base and base.get("step_seconds") else "-"
        print(f"{r['method']:<8} {pm(r, 'heldout_acc', '.3f'):>13} {pm(r, 'kl_to_ref', '.3f'):>15} "
              f"{pm(r, 'sample_len', '.1f'):>11} {100 * r['sample_eos_rate']:>5.0f} "
              f"{pm(r, 'step_seconds', '.2f') if step else '-':>13} {ratio:>8}")
    print("(mean ± sample std over seeds; step/trl = ratio of mean step times measured in the same run)")


def merge(paths, out=None):
    """Aggregate the per-seed rows of several ``--json`` files (same sizes) into one table."""
    runs = [json.load(open(p)) for p in paths]
    sizes = {k: v for k, v in runs[0]["args"].items() if k not in ("seed", "seeds", "json", "merge")}
    for p, r in zip(paths, runs):
        if {k: v for k, v in r["args"].items() if k in sizes} != sizes:
            sys.exit(f"{p}: run with other sizes than {paths[0]}")
    rows = [row for r in runs for row in r["rows"]]
    table = aggregate(rows)
    print("sizes:", json.dumps(sizes))
    print_table(table)
    if out:
        with open(out, "w") as f:
            json.dump({"args": sizes, "seeds": [s for r in runs for s in r["seeds"]], "rows": rows,
                       "aggregate": table}, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json)
    from contrastkit.models import load_model

    _, tok = load_model("smollm2", purpose="train")
    train_ds, eval_ds = load_pairs(args, tok)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    rows = []
    for seed in seeds:
        args.seed = seed
        rows.append({**baseline_row(args, eval_ds), "seed": seed})
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            rows.append({**run_method(method, args, train_ds, eval_ds), "seed": seed})
            print(f"[{method} seed {seed}] done in {time.perf_counter() - t0:.0f}s: " + json.dumps(
                {k: v for k, v in rows[-1].items() if not isinstance(v, list)}), flush=True)
        trl_losses = next((r["losses"] for r in rows if r["method"] == "trl-dpo" and r["seed"] == seed), None)
        ours = next((r["losses"] for r in rows if r["method"] == "dpo" and r["seed"] == seed), None)
        if trl_losses and ours:
            print(f"seed {seed}: max |loss(dpo) - loss(trl-dpo)| over steps: "
                  f"{max(abs(a - b) for a, b in zip(trl_losses, ours)):.3g}")
    table = aggregate(rows)
    print_table(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "seeds": seeds, "rows": rows, "aggregate": table}, f, indent=1)


if __name__ == "__main__":
    main()
