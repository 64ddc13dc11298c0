"""Contrastive search vs our greedy on the embedded SmolLM2 (CPU): tokens/s, ratio, peak extra memory.

    python benchmarks/contrastive_search.py                    # full table (several minutes)
    python benchmarks/contrastive_search.py --quick            # 32 tokens, batch 1, k=4 only
    python benchmarks/contrastive_search.py --json out.json --threads 1
    python benchmarks/contrastive_search.py --peer /tmp/tf455        # + transformers 4.55 (side dir, see --help)

Every cell (prompt set x batch x method) runs in a fresh subprocess, so the peak-memory numbers
do not inherit another cell's allocator pool: the model is loaded, a 4-token warm-up of the same
method runs, then the timed ``contrastkit.generate`` with ``min_new_tokens = max_new_tokens``
(no early EOS). "Peak extra" is the peak process RSS sampled every 2 ms during the timed call,
minus the RSS just before it. Prompts: 4 short prompts (~30 tokens, left-padded in a batch) and
1,500-token windows of WikiText-103 test (../shared/data/wikitext103_test/wiki.test.raw).
Greedy is measured in the same run, so the ratio does not depend on the machine's absolute speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

SHORT_PROMPTS = [
    "The history of the city of Paris began more than two thousand years ago, when a small Celtic tribe "
    "settled on an island in the river",
    "Scientists studying the deep ocean have discovered a new species of fish that lives near volcanic "
    "vents and survives without any",
    "In the early days of computing, programmers wrote their software on punched cards, and a single "
    "mistake could cost them a whole day",
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp, and on the night "
    "of the great storm he saw",
]
LONG_TOKENS = 1500


def wikitext_path() -> Path:
    repo = Path(__file__).resolve().parents[1]
    for base in (os.environ.get("CONTRASTKIT_SHARED_DATA"), repo.parent / "shared" / "data",
                 repo.parent.parent / "shared" / "data"):
        if base and (Path(base) / "wikitext103_test" / "wiki.test.raw").is_file():
            return Path(base) / "wikitext103_test" / "wiki.test.raw"
    sys.exit("wikitext103_test/wiki.test.raw not found (set CONTRASTKIT_SHARED_DATA)")


def prompts_for(kind: str, batch: int, tok) -> list:
    if kind == "short":
        return SHORT_PROMPTS[:batch]
    text = wikitext_path().read_text(encoding="utf-8")[:200_000]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [ids[i * 3000: i * 3000 + LONG_TOKENS] for i in range(batch)]  # distinct 1,500-token windows


class PeakRSS:
    """Sample this process's RSS in a thread; ``extra_mib`` = peak - RSS at start."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def run_cell(cell: dict) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    if cell["threads"]:
        torch.set_num_threads(cell["threads"])
    import contrastkit
    from contrastkit.models import load_model

    model, tok = load_model("smollm2")
    prompts = prompts_for(cell["prompt"], cell["batch"], tok)
    params = {} if cell["strategy"] == "greedy" else {"top_k": cell["k"], "penalty_alpha": 0.6}
    contrastkit.generate(model, tok, SHORT_PROMPTS[:1], cell["strategy"], max_new_tokens=4, min_new_tokens=4,
                         **params)  # warm-up (small, so the allocator pool stays small)
    gc.collect()
    n = cell["max_new_tokens"]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        res = contrastkit.generate(model, tok, prompts, cell["strategy"], max_new_tokens=n, min_new_tokens=n,
                                   batch_size=len(prompts), **params)
        wall = time.perf_counter() - t0
    new = sum(r.new_tokens for r in res)
    ids = [tok(p, add_special_tokens=True)["input_ids"] if isinstance(p, str) else p for p in prompts]
    return {**cell, "wall_s": wall, "new_tokens": new, "tokens_per_s": new / wall, "peak_extra_mib": mem.extra_mib,
            "prompt_tokens": [r.prompt_tokens for r in res], "text0": res[0].text[:200],
            "token_ids": [r.token_ids for r in res], "prompt_ids": ids, "pad_id": tok.pad_token_id,
            "model_path": model.config._name_or_path}


def run_peer_cell(cell: dict) -> dict:
    """The same measurement with transformers 4.x's own generate (run with PYTHONPATH=<peer dir>)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    if cell["threads"]:
        torch.set_num_threads(cell["threads"])
    cfg = AutoConfig.from_pretrained(cell["model_path"])
    if isinstance(getattr(cfg, "rope_parameters", None), dict):  # the cache is written in 5.x format
        cfg.rope_theta = cfg.rope_parameters["rope_theta"]
    model = AutoModelForCausalLM.from_pretrained(cell["model_path"], config=cfg, torch_dtype=torch.float32).eval()
    rows, T = cell["prompt_ids"], max(len(r) for r in cell["prompt_ids"])
    input_ids = torch.tensor([[cell["pad_id"]] * (T - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    params = {"do_sample": False, "pad_token_id": cell["pad_id"]}
    if cell["strategy"] != "greedy":
        params.update(penalty_alpha=0.6, top_k=cell["k"])
    model.generate(input_ids[:1, -8:], max_new_tokens=4, min_new_tokens=4, **params)  # warm-up
    gc.collect()
    n = cell["max_new_tokens"]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n, min_new_tokens=n,
                             **params)
        wall = time.perf_counter() - t0
    new = out[:, T:]
    return {**cell, "prompt_ids": None, "wall_s": wall, "new_tokens": new.numel(), "tokens_per_s": new.numel() / wall,
            "peak_extra_mib": mem.extra_mib, "prompt_tokens": [len(r) for r in rows],
            "token_ids": new.tolist(), "peer_version": transformers.__version__}


def cells(args) -> list[dict]:
    out = []
    for prompt in args.prompts:
        for batch in args.batches:
            base = {"prompt": prompt, "batch": batch, "max_new_tokens": args.max_new_tokens, "threads": args.threads}
            out.append({**base, "strategy": "greedy", "k": None})
            out += [{**base, "strategy": "contrastive", "k": k} for k in args.ks]
    return out


def spawn(cell: dict, peer: str | None = None) -> dict:
    env = dict(os.environ)
    if peer:
        env["PYTHONPATH"] = peer  # a `pip install --target` dir holding transformers 4.x (never a project dep)
    flag = "--peer_cell" if peer else "--cell"
    proc = subprocess.run([sys.executable, __file__, flag, json.dumps(cell)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"cell {cell} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| prompt | batch | method | tokens/s | x greedy | peak extra MiB |", "|---|---|---|---|---|---|"]
    greedy = {(r["prompt"], r["batch"]): r["tokens_per_s"]  # ratios are against OUR greedy
              for r in results if r["strategy"] == "greedy" and "peer_version" not in r}
    ours = {(r["prompt"], r["batch"], r["k"]): r["token_ids"] for r in results if "peer_version" not in r}
    for r in results:
        name = "greedy" if r["strategy"] == "greedy" else f"contrastive k={r['k']}"
        if "peer_version" in r:
            same = r["token_ids"] == ours.get((r["prompt"], r["batch"], r["k"]))
            name = f"transformers {r['peer_version']} {name} (same tokens as ours: {'yes' if same else 'NO'})"
        ratio = r["tokens_per_s"] / greedy[(r["prompt"], r["batch"])]
        lines.append(f"| {r['prompt']} ({max(r['prompt_tokens'])} tok) | {r['batch']} | {name} | "
                     f"{r['tokens_per_s']:.2f} | {ratio:.2f} | {r['peak_extra_mib']:+.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens, batch 1, k=4 (a smoke run)")
    parser.add_argument("--json", help="also write all measurements to this JSON file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per cell (0 = torch's default)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--ks", default="4,8")
    parser.add_argument("--prompts", default="short,long")
    parser.add_argument("--peer", help="directory made by `pip install --target DIR transformers==4.55.4 "
                        "tokenizers==0.21.4 huggingface_hub==0.34.4 --no-deps`: also time its built-in generate")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--peer_cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell or args.peer_cell:
        run = run_cell if args.cell else run_peer_cell
        print(json.dumps(run(json.loads(args.cell or args.peer_cell))))
        return 0
    if args.quick:
        args.max_new_tokens, args.batches, args.ks = 32, "1", "4"
    args.batches = [int(b) for b in args.batches.split(",")]
    args.ks = [int(k) for k in args.ks.split(",")]
    args.prompts = args.prompts.split(",")
    results = []
    for cell in cells(args):
        results.append(spawn(cell))
        if args.peer:
            mine = results[-1]
            extra = {"prompt_ids": mine["prompt_ids"], "pad_id": mine["pad_id"], "model_path": mine["model_path"]}
            results.append(spawn({**cell, **extra}, peer=args.peer))
        for r in results[-2 if args.peer else -1:]:
            who = f"hf{r['peer_version']}" if "peer_version" in r else "ours"
            print(f"{r['prompt']:>5} b={r['batch']} {who:<9} {r['strategy']:<11} k={r['k']}: "
                  f"{r['tokens_per_s']:.2f} tok/s, peak extra {r['peak_extra_mib']:+.0f} MiB", file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([{**r, "prompt_ids": None} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
