"""Speed of the ``rankgen`` strategy (RankGen beam search, arXiv 2205.09726) on 256-token prefixes.

Compared in the same process, every run producing exactly ``--new`` tokens per sequence:

* (a) ``sample``: plain batched nucleus sampling of B×N sequences of the same length (the cost of
  the samples themselves);
* ``rankgen``: B beams × N samples, rerank every L tokens, KV rows carried between rounds;
* (b) ``reference``: the reference package's algorithm (``RankGenGenerator.beam_search``), written
  here: every round re-tokenizes prefix + beam text and calls ``generate`` once per beam with
  ``num_return_sequences=N`` (a full re-prefill), then reranks the text with the same ranker.

Targets (issue 13): rankgen <= 1.25 × (a), and (b) >= 2 × rankgen. The share of rankgen's time
spent inside the ranker is reported too.

    python benchmarks/rankgen.py --data ../shared/data/wikitext103_test/wiki.test.raw --json out.json
"""

from __future__ import annotations

import argparse
import json
import time


class TimedRanker:
    """Wraps a ranker and adds up the seconds spent in it."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def score(self, prefixes, continuations):
        t0 = time.perf_counter()
        out = self.inner.score(prefixes, continuations)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def score_grouped(self, prefixes, candidates):
        t0 = time.perf_counter()
        out = self.inner.score_grouped(prefixes, candidates)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def prefix_of(path: str, tok, n_tokens: int) -> str:
    from contrastkit.rankers.data import load_documents

    for doc in load_documents(path):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            return tok.decode(ids[:n_tokens])
    raise SystemExit(f"no document with {n_tokens} tokens in {path}")


def reference_beam_search(model, tok, prefix: str, ranker, B: int, N: int, L: int, new: int, top_p: float,
                          seed: int) -> str:
    """The reference algorithm: text beams, re-tokenize + one generate per beam per round."""
    import torch

    torch.manual_seed(seed)
    beams = [""] * B
    done = 0
    while done < new:
        step = min(L, new - done)
        cands = []
        for text in beams:
            enc = tok([prefix + text], return_tensors="pt").to(model.device)
            out = model.generate(**enc, do_sample=True, top_p=top_p, top_k=None, max_new_tokens=step,
                                 min_new_tokens=step, num_return_sequences=N, pad_token_id=tok.pad_token_id)
            cands += [text + t for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
        done += step
        scores = ranker.score([prefix] * len(cands), cands)
        beams = [cands[i] for i in scores.argsort(descending=True)[:B].tolist()]
    return beams[0]


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ranker", default="embedding", help="ranker spec (default: the embedded MiniLM)")
    ap.add_argument("--data", default="Salesforce/wikitext", help="text for the prefix (file or Hub id)")
    ap.add_argument("--prefix_tokens", type=int, default=256)
    ap.add_argument("--new", type=int, default=60, help="new tokens per sequence (paper: 115)")
    ap.add_argument("--beam_size", type=int, default=2)
    ap.add_argument("--num_samples", type=int, default=10)
    ap.add_argument("--rerank_every", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    import contrastkit
    from contrastkit.models import load_model
    from contrastkit.rankers import get_ranker

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    ranker = TimedRanker(get_ranker(args.ranker))
    prefix = prefix_of(args.data, tok, args.prefix_tokens)
    B, N, L, new = args.beam_size, args.num_samples, args.rerank_every, args.new
    kw = dict(max_new_tokens=new, min_new_tokens=new, seed=0)
    contrastkit.generate(model, tok, [prefix], "sample", max_new_tokens=2, top_p=0.9)  # warm-up
    ranker.score([prefix] * 2, ["warm", "up"])  # warm-up (first-call costs stay out of the timings)
    t_a = best_of(lambda: contrastkit.generate(model, tok, [prefix] * (B * N), "sample", top_p=0.9,
                                               batch_size=B * N, **kw), args.repeats)
    ranker.seconds = 0.0
    t_r = best_of(lambda: contrastkit.generate(model, tok, [prefix], "rankgen", ranker=ranker, beam_size=B,
                                               num_samples=N, rerank_every=L, top_p=0.9, lm_tokenizer=tok, **kw),
                  args.repeats)
    ranker_share = ranker.seconds / args.repeats / t_r
    t_b = best_of(lambda: reference_beam_search(model, tok, prefix, ranker, B, N, L, new, 0.9, 0), args.repeats)
    rows = [("(a) sample B*N rows", t_a, 1.0), ("rankgen (KV carried)", t_r, t_r / t_a),
            ("(b) reference (re-prefill)", t_b, t_b / t_a)]
    print(f"model {args.model}, ranker {args.ranker}, prefix {args.prefix_tokens} tok, {new} new tok, "
          f"B={B} N={N} L={L}, threads {args.threads}, best of {args.repeats}")
    print(f"{'method':<30}{'seconds':>10}{'x (a)':>10}")
    for name, t, r in rows:
        print(f"{name:<30}{t:>10.2f}{r:>10.2f}")
    print(f"rankgen overhead over (a): {100 * (t_r / t_a - 1):+.1f}% (target <= +25%)")
    print(f"reference / rankgen: {t_b / t_r:.2f}x (target >= 2x); ranker share of rankgen time: "
          f"{100 * ranker_share:.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "sample_s": t_a, "rankgen_s": t_r, "reference_s": t_b,
                       "rankgen_over_sample": t_r / t_a, "reference_over_rankgen": t_b / t_r,
                       "ranker_share": ranker_share}, f, indent=1)


if __name__ == "__main__":
    main()
