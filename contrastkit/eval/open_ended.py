"""Open-ended generation quality: rep-2/3/4, diversity, MAUVE, coherence and length per strategy.

Protocol (SimCTG, arXiv:2202.06417; Contrastive Decoding, arXiv:2210.15097; Su & Xu, arXiv:2211.10797):
a prefix is continued by each strategy for ``max_new_tokens`` tokens and the continuation is
compared with the human continuation of the same prefix.

Data:

* WikiText-103 test (``wiki.test.raw``; the default protocol): paragraphs (title lines
  `` = ... = `` dropped) with at least ``prefix_tokens + max_new_tokens`` tokens under the
  generator's tokenizer; prefix = the first ``prefix_tokens`` tokens (SimCTG: 32), reference =
  the next ``max_new_tokens`` tokens (SimCTG: 128).
* JSON list / JSONL of ``{"prefix_text"|"prefix", "reference_text"|"reference"}`` records, e.g.
  ../shared/data/cs_wikitext_benchmark (the CD WikiText benchmark).

Metrics: rep-n and diversity on the continuations (SimCTG's definitions incl. its off-by-one,
:mod:`contrastkit.eval.metrics`); MAUVE of human vs generated continuations on the chosen
featurizer (default MiniLM; the papers used GPT-2 features, so absolute values differ);
``coherence`` = mean cosine of prefix and continuation embeddings on the same featurizer
(v1; the papers used SimCSE); ``coherence_logprob`` = mean per-token log-prob of the
continuation given the prefix under the generator itself (v2; the papers used OPT-2.7b);
``gen_length`` = mean new tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from contrastkit.errors import UsageError, check_range
from contrastkit.eval import metrics


@dataclass
class OpenEndedConfig:
    """Settings of an open-ended run (CLI flags and YAML keys)."""

    data: str = field(default="Salesforce/wikitext", metadata={  # Hub id; CONTRASTKIT_DATA or --data: README, Data
        "help": "wiki.test.raw (prefixes cut from paragraphs) or a JSON/JSONL of prefix/reference records"})
    prefix_tokens: int = field(default=32, metadata={"help": "prefix length in tokens for raw text (SimCTG: 32)"})
    max_new_tokens: int = field(default=128, metadata={"help": "continuation length (SimCTG 128, CD 256)"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N prefixes"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    featurizer: str = field(default="minilm", metadata={
        "help": "MAUVE/coherence features: minilm, self (the generator's last hidden state) or a local HF path"})
    mauve: bool = field(default=True, metadata={"help": "compute MAUVE (needs the mauve extra)"})
    mauve_seed: int = field(default=25, metadata={"help": "MAUVE's clustering seed (mauve-text default 25)"})
    mauve_seeds: int = field(default=1, metadata={"help": (
        "MAUVE over this many clustering seeds (mauve_seed, mauve_seed+1, ...): mean reported, plus mauve_std "
        "and mauve_min/max when > 1")})
    feature_max_tokens: int = field(default=256, metadata={"help": "truncate texts to this many featurizer tokens"})

    def __post_init__(self):
        check_range("prefix_tokens", self.prefix_tokens, 1)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("limit", self.limit, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("feature_max_tokens", self.feature_max_tokens, 1)
        check_range("mauve_seeds", self.mauve_seeds, 1)


def _records_from_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        return [(i + 1, r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
    return out


def load_prefix_pairs(path: str | Path, tokenizer=None, *, prefix_tokens: int = 32, reference_tokens: int = 128,
                      limit: int | None = None) -> list[dict]:
    """``[{"id", "prefix", "reference", "prefix_ids"?}]`` from raw WikiText (a file or a Hub id) or a
    prefix/reference JSON(L) file."""
    p = Path(path)
    if not p.is_file() and is_hub_id(str(path)):
        return _prefix_pairs_from_lines(hub_text_lines(str(path)), tokenizer, prefix_tokens=prefix_tokens,
                                        reference_tokens=reference_tokens, limit=limit, where=str(path))
    if not p.is_file():
        raise UsageError(f"data file '{path}' does not exist")
    if p.suffix in (".json", ".jsonl"):
        items = []
        for where, rec in _records_from_json(p):
            if not isinstance(rec, dict):
                raise UsageError(f"{path}:{where}: expected an object with prefix/reference")
            prefix = rec.get("prefix_text", rec.get("prefix"))
            ref = rec.get("reference_text", rec.get("reference"))
            if not isinstance(prefix, str) or not prefix.strip() or not isinstance(ref, str):
                raise UsageError(f"{path}:{where}: needs a non-empty 'prefix_text' (or 'prefix') and a "
                                 f"'reference_text' (or 'reference') string")
            items.append({"id": len(items), "prefix": prefix, "reference": ref})
            if limit and len(items) >= limit:
                break
        return items
    return _prefix_pairs_from_lines(p.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n"), tokenizer,
                                    prefix_tokens=prefix_tokens, reference_tokens=reference_tokens, limit=limit,
                                    where=str(path))


# Hub ids of raw-text data sets -> (config, split); the default is WikiText-103's raw test split.
HUB_TEXT = {"Salesforce/wikitext": ("wikitext-103-raw-v1", "test"), "wikitext": ("wikitext-103-raw-v1", "test")}


def is_hub_id(value: str) -> bool:
    """``owner/name`` that cannot be a local path (:func:`contrastkit.models.looks_like_path`)."""
    from contrastkit.models import looks_like_path

    return value in HUB_TEXT or (value.count("/") == 1 and not looks_like_path(value))


def hub_text_lines(name: str) -> list[str]:
    """The ``text`` column of a Hub data set's split (``HUB_TEXT`` gives config and split; else ``train``)."""
    config, split = HUB_TEXT.get(name, (None, "train"))
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown id: one line, no traceback
        from contrastkit.io import missing_data_error

        raise missing_data_error("wikitext" if name in HUB_TEXT else f"Hub data set '{name}' ({type(e).__name__})",
                                 hub_id=name, flag="--data") from None
    if "text" not in ds.column_names:
        raise UsageError(f"Hub data set '{name}' has no 'text' column (columns: {', '.join(ds.column_names)})")
    return [line for text in ds["text"] for line in text.split("\n")]


def _prefix_pairs_from_lines(lines, tokenizer, *, prefix_tokens: int, reference_tokens: int, limit: int | None,
                             where: str) -> list[dict]:
    """Paragraphs (title lines dropped) with enough tokens -> prefix of ``prefix_tokens`` + reference."""
    if tokenizer is None:
        raise UsageError("cutting prefixes from raw text needs the generator's tokenizer")
    items = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("="):
            continue
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        if len(ids) < prefix_tokens + reference_tokens:
            continue
        items.append({"id": len(items), "prefix": tokenizer.decode(ids[:prefix_tokens]),
                      "reference": tokenizer.decode(ids[prefix_tokens:prefix_tokens + reference_tokens]),
                      "prefix_ids": ids[:prefix_tokens]})
        if limit and len(items) >= limit:
            break
    if not items:
        raise UsageError(f"{where}: no paragraph has {prefix_tokens + reference_tokens} tokens")
    return items


MAUVE_MIN_TEXTS = 100  # below this per side MAUVE's histogram estimate is noisy (the paper used 5,000)
FEATURIZER_NAMES = {"minilm": "MiniLM", "self": "generator's own"}


class OpenEnded:
    """The open-ended task for :func:`contrastkit.eval.runner.run_evaluation`."""

    name = "open-ended"
    report_columns = ["rep-2", "rep-3", "rep-4", "diversity", "mauve", "mauve_std", "coherence", "coherence_logprob",
                      "gen_length"]
    item_metrics = ["coherence_logprob", "gen_length"]
    higher_is_better = {"rep-2": False, "rep-3": False, "rep-4": False, "diversity": True, "mauve": True,
                        "coherence": True, "coherence_logprob": True}
    plots = [("scatter", "diversity", "mauve"), ("bar", "rep-2", "rep-3", "rep-4")]
    metric_help = {
        "rep-2": "100 x (1 - unique / total) whitespace bigrams, counts summed over the corpus (SimCTG); percent",
        "rep-3": "as rep-2 for trigrams; percent", "rep-4": "as rep-2 for 4-grams; percent",
        "diversity": "(1 - rep-2/100)(1 - rep-3/100)(1 - rep-4/100), shown x100 (percent); summary.json keeps the "
                     "fraction",
        "mauve": "MAUVE of human vs generated continuations on the featurizer named in the header (papers: GPT-2 "
                 "features, so not comparable with published values); shown x100",
        "mauve_std": "standard deviation of MAUVE over --mauve_seeds clustering seeds; shown x100",
        "coherence": "mean cosine of prefix and continuation embeddings on the named featurizer (papers: SimCSE)",
        "coherence_logprob": "mean per-token log-prob of the continuation under the generator (papers: OPT-2.7b); nats",
        "gen_length": "mean new tokens per continuation",
    }

    @property
    def metric_labels(self) -> dict[str, str]:
        feat = FEATURIZER_NAMES.get(self.cfg.featurizer, Path(self.cfg.featurizer).name)
        return {"rep-2": "rep-2 (%)", "rep-3": "rep-3 (%)", "rep-4": "rep-4 (%)", "diversity": "diversity (%)",
                "mauve": f"mauve (%, {feat} features)", "mauve_std": "mauve std (%)",
                "coherence": f"coherence ({feat} cosine)", "coherence_logprob": "coherence (generator log-prob)",
                "gen_length": "gen length (tokens)"}

    metric_scale = {"diversity": 100.0, "mauve": 100.0, "mauve_std": 100.0}
    backend = None  # a generation backend with contrastkit.generate's signature (vLLM); None = generate here

    def __init__(self, model, tokenizer, config: OpenEndedConfig, featurizer=None, seed: int = 0):
        self.model, self.tok, self.cfg, self.seed = model, tokenizer, config, seed
        if not Path(config.data).is_file() and is_hub_id(config.data):  # a Hub id: identified by its text
            import hashlib

            lines = hub_text_lines(config.data)
            self._data_sha256 = hashlib.sha256("\n".join(lines).encode()).hexdigest()
            self._items = _prefix_pairs_from_lines(lines, tokenizer, prefix_tokens=config.prefix_tokens,
                                                   reference_tokens=config.max_new_tokens, limit=config.limit,
                                                   where=config.data)
        else:
            from contrastkit.eval.cache import file_sha256

            self._items = load_prefix_pairs(config.data, tokenizer, prefix_tokens=config.prefix_tokens,
                                            reference_tokens=config.max_new_tokens, limit=config.limit)
            self._data_sha256 = file_sha256(config.data)
        self._featurizer = featurizer
        self._ref_features = None

    @property
    def featurizer(self):
        if self._featurizer is None:
            from contrastkit.eval.mauve_features import make_featurizer

            self._featurizer = make_featurizer(self.cfg.featurizer, model=self.model, tokenizer=self.tok,
                                               max_length=self.cfg.feature_max_tokens)
        return self._featurizer

    def config(self) -> dict:
        from contrastkit.eval import task_spec

        return {**asdict(self.cfg), "version": task_spec(self.name)["version"]}

    def identity(self) -> dict:
        """What determines the records (generations): data bytes, prefix and continuation lengths, version."""
        from contrastkit.eval import task_spec

        return {"data_sha256": self._data_sha256, "prefix_tokens": self.cfg.prefix_tokens,
                "max_new_tokens": self.cfg.max_new_tokens, "version": task_spec(self.name)["version"]}

    def item_key(self, item: dict) -> str:
        return item["prefix"]

    def dataset_info(self) -> dict:
        file = str(Path(self.cfg.data).resolve()) if Path(self.cfg.data).is_file() else self.cfg.data
        return {"file": file, "sha256": self._data_sha256,
                "n_items": len(self._items), "featurizer": self.cfg.featurizer,
                "featurizer_note": "MAUVE and coherence use this featurizer; the papers used GPT-2 (MAUVE) and "
                                   "SimCSE (coherence), so absolute values are not comparable with theirs"}

    def warnings(self) -> list[str]:
        if self.cfg.mauve and len(self._items) < MAUVE_MIN_TEXTS:
            return [f"MAUVE over {len(self._items)} texts per side (< {MAUVE_MIN_TEXTS}): "
                    f"{max(2, round(len(self._items) / 10))} clusters, the score is noisy; the MAUVE paper used 5,000"]
        return []

    def items(self) -> list[dict]:
        return self._items

    def run_items(self, spec, items: list[dict]) -> list[dict]:
        from contrastkit.decoding.scoring import score
        from contrastkit.generation import generate

        prompts = [it.get("prefix_ids") or it["prefix"] for it in items]
        gen = generate if self.backend is None else self.backend.generate  # --backend vllm: plain strategies
        results = gen(self.model, self.tok, prompts, spec.name, max_new_tokens=self.cfg.max_new_tokens,
                      batch_size=self.cfg.batch_size, seed=self.seed, **spec.params)
        texts = [r.text for r in results]
        idx = [i for i, t in enumerate(texts) if t.strip()]
        logprob = [None] * len(items)
        if idx:
            scored = score(self.model, self.tok, [items[i]["prefix"] for i in idx], [[texts[i]] for i in idx],
                           "greedy", batch_size=self.cfg.batch_size)
            for i, s in zip(idx, scored):
                logprob[i] = s[0].total / max(len(s[0].token_scores), 1)
        return [{"prefix": it["prefix"], "reference": it["reference"], "generation": t, "new_tokens": r.new_tokens,
                 "gen_length": r.new_tokens, "coherence_logprob": lp}
                for it, r, t, lp in zip(items, results, texts, logprob)]

    def summarize(self, spec, records: list[dict]) -> dict[str, float]:
        gens = [r["generation"] for r in records]
        out = metrics.repetition_and_diversity(gens)
        out["reference_diversity"] = metrics.repetition_and_diversity([r["reference"] for r in records])["diversity"]
        out["gen_length"] = float(np.mean([r["new_tokens"] for r in records]))
        lps = [r["coherence_logprob"] for r in records if r["coherence_logprob"] is not None]
        out["coherence_logprob"] = float(np.mean(lps)) if lps else None
        feats = self.featurizer(gens)
        out["coherence"] = metrics.cosine_coherence(self.featurizer([r["prefix"] for r in records]), feats)
        if self.cfg.mauve:
            from contrastkit.eval.mauve_features import compute_mauve

            key = tuple(r["id"] for r in records)
            if self._ref_features is None or self._ref_features[0] != key:  # references of exactly these items
                self._ref_features = (key, self.featurizer([r["reference"] for r in records]))
            runs = [compute_mauve(self._ref_features[1], feats, seed=self.cfg.mauve_seed + k)
                    for k in range(self.cfg.mauve_seeds)]
            out.update(runs[0])
            values = np.array([r["mauve"] for r in runs])
            out["mauve"] = float(values.mean())
            if len(runs) > 1:
                out.update({"mauve_std": float(values.std(ddof=1)), "mauve_min": float(values.min()),
                            "mauve_max": float(values.max()), "mauve_seeds": len(runs)})
        return out

    def reference_metrics(self) -> dict[str, float]:
        """rep-n / diversity of the human references (the ceiling the papers quote)."""
        return metrics.repetition_and_diversity([it["reference"] for it in self._items])
