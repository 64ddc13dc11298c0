"""Per-token cost of ``icd`` / ``lol`` with a LoRA amateur vs expert greedy + amateur greedy run back to back.

Target (issue #4): icd and lol (refocus stream included) each cost <= 1.15x the sum of the two
greedy runs, measured in the same process; resident memory with the adapter amateur <= 1.1x one
model. Every run generates exactly ``--new`` tokens (min_new_tokens = max_new_tokens).

    python benchmarks/contrastive_decoding.py --adapter /tmp/ck4/amateur-smollm2-160 --json out.json

Without ``--adapter`` a random rank-16 all-linear LoRA adapter is made in a temporary folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPTS = [
    "Who wrote the novel Pride and Prejudice?",
    "What is the capital city of Australia?",
    "Explain why the sky is blue in one sentence.",
    "Name the largest planet in the solar system.",
]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def random_adapter(model_name: str, path: str) -> str:
    import torch
    from peft import LoraConfig, get_peft_model

    from contrastkit.models import load_model

    torch.manual_seed(0)
    base, _ = load_model(model_name)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(path)
    return path


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speed(args) -> dict:
    import torch

    import contrastkit
    from contrastkit.models import load_model

    torch.set_num_threads(args.threads)
    expert, tok = load_model(args.model)
    amateur_model, _ = load_model(args.model, adapter=args.adapter)  # baseline: the amateur on its own
    prompts = PROMPTS[:args.batch]
    kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, chat=True, batch_size=args.batch)

    def run(model, strategy, **params):
        return lambda: contrastkit.generate(model, tok, prompts, strategy, **kw, **params)

    t = {
        "expert greedy": timed(run(expert, "greedy"), args.repeats),
        "amateur greedy": timed(run(amateur_model, "greedy"), args.repeats),
    }
    t["sum of both"] = t["expert greedy"] + t["amateur greedy"]
    cases = {
        "icd (mixed batch)": ("icd", dict(amateur=args.adapter)),
        "icd (sequential)": ("icd", dict(amateur=args.adapter, mixed_batch=False)),
        "lol (mixed batch)": ("lol", dict(amateur=args.adapter)),
        "lol (sequential)": ("lol", dict(amateur=args.adapter, mixed_batch=False)),
        "lol no refocus (mixed)": ("lol", dict(amateur=args.adapter, refocus_weight=0.0)),
        "lol bucket=high (mixed)": ("lol", dict(amateur=args.adapter, lower_layer="high")),
        "dola (high)": ("dola", dict()),
    }
    for name, (strategy, params) in cases.items():
        t[name] = timed(run(expert, strategy, **params), args.repeats)
    steps = args.new
    return {name: {"ms_per_step": 1000 * v / steps, "ratio_to_sum": v / t["sum of both"]} for name, v in t.items()}


def memory(args) -> dict:
    """Child process: RSS of one model after a greedy run, then after attaching the adapter amateur and decoding
    with icd and lol (the safetensors weights are mmapped, so RSS only counts them once touched)."""
    import torch

    import contrastkit
    from contrastkit.models import load_model

    torch.set_num_threads(args.threads)
    gc.collect()
    r0 = rss_mb()
    expert, tok = load_model(args.model)
    contrastkit.generate(expert, tok, PROMPTS[:args.batch], "greedy", max_new_tokens=8)  # touch every weight page
    gc.collect()
    r1 = rss_mb()
    for strategy in ("icd", "lol"):
        contrastkit.generate(expert, tok, PROMPTS[:args.batch], strategy, max_new_tokens=8, amateur=args.adapter)
    gc.collect()
    r2 = rss_mb()
    return {"rss_one_model_mb": r1 - r0, "rss_with_adapter_amateur_mb": r2 - r0, "ratio": (r2 - r0) / (r1 - r0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.adapter is None:
        args.adapter = random_adapter(args.model, tempfile.mkdtemp(prefix="ck-adapter-"))
    if args.memory_child:
        print(json.dumps(memory(args)))
        return
    child = [sys.executable, __file__, "--memory-child", "--model", args.model, "--adapter", args.adapter,
             "--batch", str(args.batch), "--threads", str(args.threads)]
    mem = json.loads(subprocess.run(child, check=True, capture_output=True, text=True,
                                    env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).stdout.splitlines()[-1])
    res = speed(args)
    print(f"SmolLM2 per-step time, batch={args.batch}, {args.new} new tokens, threads={args.threads}")
    print(f"{'run':<26}{'ms/step':>10}{'x (expert+amateur greedy)':>28}")
    for name, r in res.items():
        print(f"{name:<26}{r['ms_per_step']:>10.1f}{r['ratio_to_sum']:>28.2f}")
    print(f"resident memory: one model {mem['rss_one_model_mb']:.0f} MB, with adapter amateur after icd+lol "
          f"{mem['rss_with_adapter_amateur_mb']:.0f} MB -> {mem['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"speed": res, "memory": mem, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
