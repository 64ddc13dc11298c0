"""One prepared GPU benchmark (issue 15): a random-init ~1.1B Llama in bf16, no network, < 8 minutes.

    bash benchmarks/gpu.sh --out /tmp/gpu_bench            # CUDA machine: the real run
    bash benchmarks/gpu.sh --out /tmp/gpu_dry --dry_run    # CPU, tiny model, seconds (the test runs this)

Sections, each against a baseline measured in the same process on the same prompts:

1. greedy vs contrastive search (k=4, k=8; alpha 0.6): tokens/s at batch 1 and 16.
   Target: contrastive >= 0.9x greedy at batch 1.
2. the CD family (cd, icd, lol) with a LoRA amateur (the same base + a random rank-16 all-linear
   adapter) vs expert greedy + amateur greedy run back to back. Target: <= 1.15x that sum.
3. TruthfulQA-style MC scoring: synthetic questions with 8 answers each behind the QA primer,
   packed primer-cached scoring vs one answer per forward (questions/s, max |score diff|).

Every generation produces exactly ``--new`` tokens (min_new_tokens = max_new_tokens), the first
call of each method is an untimed warm-up, CUDA is synchronised around each timed call, and the
JSON (``OUT/gpu_bench.json``) is rewritten after every section, so a timeout keeps what finished.
Prompts are synthetic (random words of contrastkit.testing's corpus, tiny BPE tokenizer; the model
vocabulary is 32k so the LM head costs what a real one does). Random weights: speed only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import time

BIG = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
           intermediate_size=8192, vocab_size=32000, max_position_embeddings=4096)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, max_position_embeddings=1024)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_bench.json (created)")
    p.add_argument("--dry_run", action="store_true", help="CPU, tiny model, few tokens: checks the script runs")
    p.add_argument("--new", type=int, default=None, help="new tokens per generation (default 128; dry run 4)")
    p.add_argument("--questions", type=int, default=None, help="MC questions (default 64; dry run 3)")
    p.add_argument("--budget_s", type=float, default=450.0, help="skip sections that would start after this")
    return p.parse_args(argv)


def prompts(n: int, words: int, seed: int = 0) -> list[str]:
    from contrastkit.testing import CORPUS_WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(words)) + "." for _ in range(n)]


def build(dry: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from contrastkit.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    dev = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    cfg = LlamaConfig(**(TINY if dry else BIG), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    with dev:
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model, tok


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, keep: list | None = None) -> float:
    """Seconds of the second call (the first warms kernels, allocator, caches); its result goes to ``keep``."""
    fn()
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    if keep is not None:
        keep.append(out)
    return time.perf_counter() - t0


def gen(model, tok, texts, strategy, new, **params):
    import contrastkit

    return lambda: contrastkit.generate(model, tok, texts, strategy, max_new_tokens=new, min_new_tokens=new,
                                        batch_size=len(texts), **params)


def section_search(model, tok, new: int, batches) -> list[dict]:
    rows = []
    for b in batches:
        texts = prompts(b, 24, seed=b)
        t_greedy = timed(gen(model, tok, texts, "greedy", new))
        rows.append({"method": "greedy", "batch": b, "tok_s": b * new / t_greedy, "ratio_to_greedy": 1.0})
        for k in (4, 8):
            t = timed(gen(model, tok, texts, "contrastive", new, top_k=k, penalty_alpha=0.6))
            rows.append({"method": f"contrastive k={k}", "batch": b, "tok_s": b * new / t, "ratio_to_greedy": t_greedy / t})
    return rows


def section_cd(model, tok, new: int, batches) -> list[dict]:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    adapter = tempfile.mkdtemp(prefix="ck-gpu-amateur-")
    torch.manual_seed(1)
    get_peft_model(copy.deepcopy(model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                    init_lora_weights=False)).save_pretrained(adapter)
    amateur = PeftModel.from_pretrained(copy.deepcopy(model), adapter).eval()  # the baseline's separate amateur
    from contrastkit.decoding.contrastive_decoding import bind_tokenizer

    bind_tokenizer(model, tok)  # lol's refocus instruction is tokenized with it
    rows = []
    for b in batches:
        texts = prompts(b, 24, seed=100 + b)
        t_sum = timed(gen(model, tok, texts, "greedy", new)) + timed(gen(amateur, tok, texts, "greedy", new))
        rows.append({"method": "expert greedy + amateur greedy", "batch": b, "ms_per_step": 1000 * t_sum / new,
                     "ratio_to_sum": 1.0})
        for strategy in ("cd", "icd", "lol"):
            t = timed(gen(model, tok, texts, strategy, new, amateur=adapter))
            rows.append({"method": strategy, "batch": b, "ms_per_step": 1000 * t / new, "ratio_to_sum": t / t_sum})
    del amateur
    return rows


def section_mc(model, tok, n_questions: int) -> list[dict]:
    import torch

    from contrastkit.decoding.scoring import score
    from contrastkit.eval.truthfulqa import PrefixCachedScorer, build_context

    qs = prompts(n_questions, 8, seed=7)
    contexts = [build_context("What happens if " + q.rstrip(".") + "?") for q in qs]
    answers = [[" " + a for a in prompts(8, random.Random(i).randint(3, 12), seed=1000 + i)] for i in range(len(qs))]

    def packed():
        scorer = PrefixCachedScorer(model, tok, packed=True)
        return [r for s in range(0, len(qs), 8) for r in scorer.score(contexts[s:s + 8], answers[s:s + 8])]

    def one_at_a_time():
        return [[score(model, tok, c, [a], "greedy", batch_size=1)[0][0].total for a in ans]
                for c, ans in zip(contexts, answers)]

    with torch.no_grad():
        one, pk = [], []
        t_one = timed(one_at_a_time, one)
        t_packed = timed(packed, pk)
        diff = max(abs(x - y) for r1, r2 in zip(pk[0], one[0]) for x, y in zip(r1, r2))
    n = len(qs)
    return [{"method": "one answer at a time", "questions_s": n / t_one, "speedup": 1.0},
            {"method": "packed, primer cached", "questions_s": n / t_packed, "speedup": t_one / t_packed,
             "max_abs_diff_vs_one_at_a_time": diff}]


def targets(sections: dict) -> dict:
    """The issue's targets: contrastive k=4 >= 0.9x greedy tok/s at batch 1; each CD method <= 1.15x the sum."""
    out = {}
    for row in sections.get("greedy_vs_contrastive", {}).get("rows", []):
        if row["method"] == "contrastive k=4" and row["batch"] == 1:
            out["contrastive_k4_b1_vs_greedy>=0.9"] = {"value": row["ratio_to_greedy"],
                                                       "met": row["ratio_to_greedy"] >= 0.9}
    for row in sections.get("cd_family_vs_expert_plus_amateur", {}).get("rows", []):
        if row["method"] in ("cd", "icd", "lol"):
            out[f"{row['method']}_b{row['batch']}_vs_sum<=1.15"] = {"value": row["ratio_to_sum"],
                                                                     "met": row["ratio_to_sum"] <= 1.15}
    return out


def write(out: str, result: dict) -> None:
    from contrastkit.io import atomic_write

    with atomic_write(os.path.join(out, "gpu_bench.json")) as f:
        json.dump(result, f, indent=1)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; run on a GPU machine or pass --dry_run (CPU, tiny model)", file=sys.stderr)
        return 2
    if args.dry_run:
        torch.set_num_threads(1)
    new = args.new or (4 if args.dry_run else 128)
    nq = args.questions or (3 if args.dry_run else 64)
    batches = (1, 2) if args.dry_run else (1, 16)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    model, tok = build(args.dry_run)
    n_params = sum(p.numel() for p in model.parameters())
    result = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name(0) if not args.dry_run else "cpu",
              "dtype": str(next(model.parameters()).dtype), "params": n_params, "new_tokens": new,
              "batches": list(batches), "torch": torch.__version__, "sections": {}, "skipped": []}
    sections = {"greedy_vs_contrastive": lambda: section_search(model, tok, new, batches),
                "cd_family_vs_expert_plus_amateur": lambda: section_cd(model, tok, new, batches),
                "truthfulqa_mc_scoring": lambda: section_mc(model, tok, nq)}
    for name, fn in sections.items():
        if time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        result["sections"][name] = {"rows": fn(), "seconds": time.perf_counter() - t0}
        write(args.out, result)
        print(f"\n## {name} ({result['sections'][name]['seconds']:.1f} s)")
        for row in result["sections"][name]["rows"]:
            print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    result["targets"] = targets(result["sections"])
    result["total_seconds"] = time.perf_counter() - t_start
    write(args.out, result)
    for name, t in result["targets"].items():
        print(f"target {name}: {t['value']:.3f} ({'met' if t['met'] else 'NOT met'})")
    print(f"\n{n_params / 1e6:.1f}M params, {result['device']}, {result['total_seconds']:.0f} s; "
          f"JSON: {os.path.join(args.out, 'gpu_bench.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
