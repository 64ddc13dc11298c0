"""Quality of RankGen decoding on WikiText prefixes (arXiv 2205.09726 Table 3, scaled down to a CPU).

Methods, all continuing the same prefixes with the same generator for ``--new`` tokens:
greedy; nucleus (p=0.9); rerank of N nucleus samples by length-normalised LM log-likelihood (the
generator itself; the paper's "re-rank by LM perplexity"); rerank of the same N samples by a
trained ranker; ``rankgen`` beam search (B=2, N=10, L=20) with that ranker. The two reranks use
identical candidates: one ``rankgen`` run with B=1, L=new (exactly the samples ``sample`` would
draw) whose ranker scores every sample with both rankers (:class:`SharedRerank`).

Metrics through the eval harness (:mod:`contrastkit.eval.metrics`, :mod:`contrastkit.eval.mauve_features`,
:mod:`contrastkit.eval.stats`): MAUVE of human vs generated continuations on a featurizer that
is *not* the ranker's encoder (default: the generator's own last hidden state, ``self``; the
paper used GPT-2-large features, so absolute values differ), with a bootstrap CI over prefixes;
diversity and coherence (cosine of prefix and continuation features on the same featurizer) with
bootstrap CIs, and paired bootstrap differences against nucleus.

    python benchmarks/rankgen_quality.py --ranker runs/ranker --data ../shared/data/wikitext103_test/wiki.test.raw \\
        --n 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def heldout_lines(path: str, k: int) -> list[str]:
    """The raw lines of the last ``k`` WikiText articles: what ``train ranker --eval_documents k`` holds out."""
    from contrastkit.rankers.data import _TITLE

    docs: list[list[str]] = []
    for line in open(path, encoding="utf-8").read().replace("\r\n", "\n").split("\n"):
        if _TITLE.match(line):
            docs.append([])
        elif docs:
            docs[-1].append(line)
    return [line for d in docs[-k:] for line in d]


def prefixes_and_refs(path: str, tok, n: int, prefix_tokens: int, ref_tokens: int, skip: int,
                      heldout_documents: int = 0) -> list[dict]:
    from contrastkit.eval.open_ended import _prefix_pairs_from_lines, load_prefix_pairs

    if heldout_documents:
        items = _prefix_pairs_from_lines(heldout_lines(path, heldout_documents), tok, prefix_tokens=prefix_tokens,
                                         reference_tokens=ref_tokens, limit=n + skip, where=path)
    else:
        items = load_prefix_pairs(path, tok, prefix_tokens=prefix_tokens, reference_tokens=ref_tokens,
                                  limit=n + skip)
    if len(items) < skip + n:
        print(f"only {len(items) - skip} prefixes available (asked {n})", flush=True)
    return items[skip:skip + n]


def _ranker_base():
    from contrastkit.rankers.base import Ranker

    return Ranker


class SharedRerank(_ranker_base()):
    """A ranker for ``rankgen`` with B=1, N=n, L=new (one rerank round, at the end) that scores each
    prompt's n finished samples with the LM ranker (what the strategy keeps: ``rerank-lm``) and
    records which sample the trained ranker would keep (``rerank-ranker``): one set of samples, two
    reranks on identical candidates, half the generation time."""

    name = "shared-rerank"

    def __init__(self, lm_ranker, ranker):
        self.lm, self.other, self.picks = lm_ranker, ranker, []

    def score(self, prefixes, continuations):
        return self.lm.score(prefixes, continuations)

    def score_grouped(self, prefixes, texts):
        import torch

        s_lm, s_other = self.lm.score_grouped(prefixes, texts), self.other.score_grouped(prefixes, texts)
        k = len(texts) // len(prefixes)
        for j in range(len(prefixes)):
            cands = texts[j * k:(j + 1) * k]
            self.picks.append({"rerank-lm": cands[int(torch.argmax(s_lm[j]))],
                               "rerank-ranker": cands[int(torch.argmax(s_other[j]))]})
        return s_lm


def run_methods(model, tok, prompts, args, ranker, lm_ranker) -> dict[str, list[str]]:
    import contrastkit

    kw = dict(max_new_tokens=args.new, seed=args.seed)
    over = dict(beam_size=1, num_samples=args.rerank_n, rerank_every=args.new, top_p=0.9, lm_tokenizer=tok)
    shared = SharedRerank(lm_ranker, ranker)
    specs = {
        "greedy": ("greedy", {}),
        "nucleus": ("sample", dict(top_p=0.9)),
        "rerank": ("rankgen", dict(ranker=shared, **over)),  # -> rerank-lm and rerank-ranker
        "rankgen": ("rankgen", dict(ranker=ranker, beam_size=2, num_samples=10, rerank_every=20, top_p=0.9,
                                    lm_tokenizer=tok)),
    }
    out, timing = {}, {}
    for name, (strategy, params) in specs.items():
        wanted = ["rerank-lm", "rerank-ranker"] if name == "rerank" else [name]
        if args.methods and not set(wanted) & set(args.methods):
            continue
        t0 = time.perf_counter()
        bs = args.batch_size if strategy in ("greedy", "sample") else args.rankgen_batch_size
        res = contrastkit.generate(model, tok, prompts, strategy, batch_size=bs, progress=True, **kw, **params)
        took = time.perf_counter() - t0
        if name == "rerank":
            if len(shared.picks) != len(prompts):
                raise SystemExit(f"expected one rerank round per prompt, saw {len(shared.picks)}")
            mismatch = sum(p["rerank-lm"].strip() != r.text.strip() for p, r in zip(shared.picks, res))
            print(f"rerank: {mismatch} of {len(res)} LM picks differ from the strategy's output text", flush=True)
            for m in wanted:
                out[m] = [p[m] for p in shared.picks]
                timing[m] = took  # one generation serves both
        else:
            out[name] = [r.text for r in res]
            timing[name] = took
        print(f"{name}: {took:.0f} s", flush=True)
    return out, timing


def mauve_with_ci(human_f, gen_f, n_boot: int, seed: int) -> dict:
    from contrastkit.eval.mauve_features import compute_mauve

    point = compute_mauve(human_f, gen_f)["mauve"]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):  # resample prefixes (human and generated rows together)
        idx = rng.integers(0, len(human_f), len(human_f))
        boots.append(compute_mauve(human_f[idx], gen_f[idx])["mauve"])
    lo, hi = (np.percentile(boots, [2.5, 97.5]).tolist() if boots else (float("nan"), float("nan")))
    return {"mauve": point, "mauve_ci": [lo, hi], "mauve_boot": n_boot}


def evaluate(items, texts: dict[str, list[str]], featurizer, args) -> dict:
    from contrastkit.eval import metrics, stats

    human = [it["reference"] for it in items]
    prefix_f = featurizer([it["prefix"] for it in items])
    human_f = featurizer(human)
    report, coh = {}, {}
    for name, gens in texts.items():
        gen_f = featurizer(gens)
        a = prefix_f / np.linalg.norm(prefix_f, axis=1, keepdims=True)
        b = gen_f / np.clip(np.linalg.norm(gen_f, axis=1, keepdims=True), 1e-12, None)
        coh[name] = np.sum(a * b, axis=1)
        div = [metrics.repetition_and_diversity([g])["diversity"] for g in gens]
        report[name] = {
            **mauve_with_ci(human_f, gen_f, args.mauve_boot, args.seed),
            "coherence": stats.summarize(coh[name].tolist()),
            "coherence_harness": metrics.cosine_coherence(prefix_f, gen_f),
            "diversity_corpus": metrics.repetition_and_diversity(gens)["diversity"],
            "diversity_per_text": stats.summarize(div),
            "words": stats.summarize([len(g.split()) for g in gens]),
        }
    if "nucleus" in coh:
        for name in coh:
            if name != "nucleus":
                report[name]["coherence_minus_nucleus"] = stats.paired_bootstrap(coh[name].tolist(),
                                                                                 coh["nucleus"].tolist())
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ranker", required=True, help="trained ranker (dir or spec) for rerank-ranker and rankgen")
    ap.add_argument("--data", default="Salesforce/wikitext", help="wiki.test.raw-style file")
    ap.add_argument("--n", type=int, default=100, help="number of prefixes (issue: >= 100)")
    ap.add_argument("--skip", type=int, default=0, help="skip the first paragraphs (e.g. ranker training text)")
    ap.add_argument("--heldout_documents", type=int, default=0,
                    help="take prefixes only from the last K articles (the ranker's --eval_documents K): no leakage")
    ap.add_argument("--prefix_tokens", type=int, default=64)
    ap.add_argument("--new", type=int, default=60, help="new tokens (paper: ~128)")
    ap.add_argument("--rerank_n", type=int, default=20)
    ap.add_argument("--featurizer", default="self", help="MAUVE/coherence features; not the ranker's encoder")
    ap.add_argument("--mauve_boot", type=int, default=50)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--rankgen_batch_size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip_eval", action="store_true", help="only generate (texts go to --json)")
    ap.add_argument("--merge", nargs="*", default=None, help="evaluate the texts of earlier --json files together")
    args = ap.parse_args()

    from contrastkit.eval.mauve_features import make_featurizer
    from contrastkit.models import load_model
    from contrastkit.rankers import LMRanker, get_ranker

    model, tok = load_model(args.model)
    ranker = get_ranker(args.ranker)
    items = prefixes_and_refs(args.data, tok, args.n, args.prefix_tokens, args.new, args.skip, args.heldout_documents)
    prompts = [{"input_ids": it["prefix_ids"]} for it in items]
    if args.merge:  # texts generated by earlier runs (e.g. methods split over processes)
        texts, timing = {}, {}
        for path in args.merge:  # a method split over files by --skip/--n is concatenated in file order
            d = json.load(open(path))
            for name, gens in d["texts"].items():
                texts[name] = texts.get(name, []) + list(gens)
                timing[name] = timing.get(name, 0.0) + d["timing_s"][name]
        short = {name: len(g) for name, g in texts.items() if len(g) != len(items)}
        if short:
            raise SystemExit(f"merged texts do not cover the {len(items)} prefixes: {short}")
    else:
        texts, timing = run_methods(model, tok, prompts, args, ranker, LMRanker(model, tok))
    if args.skip_eval:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "timing_s": timing, "texts": texts}, f, indent=1)
        return
    featurizer = make_featurizer(args.featurizer, model=model, tokenizer=tok)
    report = evaluate(items, texts, featurizer, args)
    print(f"{len(items)} prefixes of {args.prefix_tokens} tokens, {args.new} new tokens, featurizer {featurizer.name}")
    print(f"{'method':<15}{'MAUVE':>8}{'95% CI':>16}{'coherence':>11}{'95% CI':>18}{'div':>7}{'s':>7}")
    for name, r in report.items():
        c = r["coherence"]
        print(f"{name:<15}{r['mauve']:>8.3f}  [{r['mauve_ci'][0]:.3f}, {r['mauve_ci'][1]:.3f}]"
              f"{c['mean']:>11.3f}  [{c['ci_lo']:.3f}, {c['ci_hi']:.3f}]{r['diversity_corpus']:>7.3f}"
              f"{timing[name]:>7.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "report": report, "timing_s": timing, "texts": texts}, f, indent=1)


if __name__ == "__main__":
    main()
