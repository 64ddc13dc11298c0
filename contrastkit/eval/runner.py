"""One resumable runner for every eval task: strategies x task -> records, summary, table, plots.

A *task* is any object with::

    name: str
    def config(self) -> dict                            # JSON-able settings shown in reports
    def items(self) -> list[dict]                        # each with a unique "id"
    def run_items(self, spec: StrategySpec, items) -> list[dict]   # one record per item, same order
    def summarize(self, spec: StrategySpec, records) -> dict[str, float]
    report_columns: list[str]                           # metrics shown in the Markdown table
    plots: list[tuple[str, ...]]                         # ("bar", metric, ...) or ("scatter", x, y)

and optionally ``identity()`` (what determines the scores; default ``config()``), ``item_key(item)``
(stored in each record and checked on resume), ``item_metrics`` (record fields that are per-item
values of a metric: they get stderr, bootstrap CIs and paired tests), ``dataset_info()``,
``warnings()``, ``metric_labels`` (column headers that carry deviations, e.g. ``mauve (MiniLM
features)``) and ``metric_help`` (one line per metric, printed under the table).

Output directory layout::

    records/<label>.jsonl       per-item records, appended (flushed + fsynced) as each chunk finishes
    records/<label>.meta.json   the fingerprint the records were computed with (:mod:`contrastkit.eval.cache`)
    summary.json  results.md  <plot>.png

``<label>`` is the run label: the strategy name, plus a short hash of its parameters when it has
any, or the user's ``--label``. Reports are built from *every* label in the directory whose task
identity matches this run's (other invocations' strategies and settings included), so two
settings of one strategy can share a directory and no invocation drops another's rows.

Resuming: items whose id is already in ``records/<label>.jsonl`` are never recomputed; a line
cut short by a kill is dropped. Records computed with another fingerprint are refused with the
changed field named, unless ``overwrite=True``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contrastkit.errors import UsageError
from contrastkit.eval.cache import (
    RecordCache,
    flatten,
    jsonable,
    load_meta,
    load_records,
    run_label,
    strategy_identity,
)

SCHEMA_VERSION = 2


@dataclass
class StrategySpec:
    """One column of the comparison: a registered strategy with its parameters."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "params": jsonable(self.params)}


_jsonable = jsonable  # old name


def parse_strategies(names: str | list[str], strategy_args: dict | None = None,
                     common: dict | None = None, labels: str | list[str] | None = None) -> list[StrategySpec]:
    """``"greedy,icd"`` + ``{"icd": {"amateur": ...}}`` -> validated :class:`StrategySpec` list.

    ``common`` parameters (e.g. ``amateur``) go to every strategy whose config has that field.
    ``labels`` (comma-separated, one per strategy) name the runs; default :func:`run_label`.
    Unknown strategy names raise the registry's did-you-mean error; unknown parameters raise too.
    """
    import dataclasses

    from contrastkit.decoding.base import get_strategy

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise UsageError("no strategies given (e.g. --strategies greedy,sample)")
    if len(set(names)) != len(names):
        raise UsageError(f"strategy listed twice in {names}")
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")]
    if labels is not None and (len(labels) != len(names) or not all(labels) or len(set(labels)) != len(labels)):
        raise UsageError(f"--label needs one distinct, non-empty label per strategy ({len(names)}), got {labels}")
    for lab in labels or []:
        if "/" in lab or lab.startswith("."):
            raise UsageError(f"--label '{lab}' must be a plain file name (no '/', no leading '.')")
    strategy_args = strategy_args or {}
    for key in strategy_args:
        if key not in names:
            raise UsageError(f"--strategy_args names '{key}', which is not in --strategies {','.join(names)}")
    specs = []
    for i, name in enumerate(names):
        strat = get_strategy(name)
        fields = {f.name for f in dataclasses.fields(strat.config_cls)}
        params = {k: v for k, v in (common or {}).items() if k in fields and v is not None}
        params.update(strategy_args.get(name, {}))
        strat.make_config(**params)  # validate now, before any model work
        specs.append(StrategySpec(labels[i] if labels else run_label(name, params), name, params))
    return specs


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("contrastkit", "torch", "transformers", "peft", "mauve-text", "sacrebleu", "rouge-score", "lm_eval"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the contrastkit checkout this runs from (None outside a git checkout)."""
    import subprocess

    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def task_identity(task) -> dict:
    ident = task.identity() if hasattr(task, "identity") else task.config()
    return {"name": task.name, **jsonable(ident)}


def model_identity(task, model_name: str = "") -> dict:
    model = getattr(task, "model", None)
    if model is None:
        return {"name": model_name}
    from contrastkit.models import weights_identity

    return weights_identity(model)


def run_evaluation(task, specs: list[StrategySpec], output_dir: str | Path, *, chunk_size: int = 8,
                   seed: int = 0, overwrite: bool = False, progress: bool = True, model_name: str = "",
                   on_chunk: Callable[[str, int], None] | None = None, plots: bool = True,
                   model_ident: dict | None = None) -> dict:
    """Run every strategy over the task's items with per-item caching; write summary, table and plots.

    Args:
        task: see the module docstring.
        specs: strategies to compare (``parse_strategies``).
        output_dir: created if missing; holds the caches and reports.
        chunk_size: items per ``task.run_items`` call (= per cache flush).
        model_ident: the model's identity (default: :func:`contrastkit.models.weights_identity` of ``task.model``).
        on_chunk: called as ``on_chunk(label, n_done)`` after each flushed chunk (tests use it to interrupt).

    Returns:
        The summary dict (also written to ``summary.json``), built from every compatible record in the directory.
    """
    out = Path(output_dir)
    (out / "records").mkdir(parents=True, exist_ok=True)
    items = task.items()
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise UsageError("task items must have unique ids")
    keys = {it["id"]: task.item_key(it) for it in items} if hasattr(task, "item_key") else {}
    t_ident = task_identity(task)
    m_ident = model_ident if model_ident is not None else model_identity(task, model_name)
    caches = []
    for spec in specs:  # check every fingerprint before computing anything
        fp = flatten({"task": t_ident, "strategy": strategy_identity(spec.name, spec.params), "model": m_ident,
                      **({"seed": seed} if getattr(task, "uses_seed", True) else {})})
        info = {"spec": spec.to_dict(), "model_name": model_name, "task_name": task.name}
        cache = RecordCache(out / "records" / f"{spec.label}.jsonl", fp, overwrite, info)
        cache.check_items(keys)
        caches.append(cache)
    for spec, cache in zip(specs, caches):  # every label passed its checks: only now touch the files
        _run_strategy(task, spec, items, cache.open(), chunk_size, progress, on_chunk, keys)
    summary = build_summary(task, out, ids, seed=seed, model_name=model_name)
    write_reports(summary, out, getattr(task, "report_columns", None), getattr(task, "plots", []) if plots else [])
    return summary


def _run_strategy(task, spec, items, cache, chunk_size, progress, on_chunk, keys) -> None:
    todo = [it for it in items if it["id"] not in cache.records]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{task.name}[{spec.label}]", unit="item")
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        t0 = time.perf_counter()
        records = task.run_items(spec, chunk)
        elapsed = time.perf_counter() - t0
        for rec, it in zip(records, chunk):
            rec["id"] = it["id"]
            if keys:
                rec["item_key"] = keys[it["id"]]
            rec.setdefault("time_s", elapsed / len(chunk))
        cache.append(records)
        if bar is not None:
            bar.update(len(chunk))
        if on_chunk is not None:
            on_chunk(spec.label, len(cache.records))
    if bar is not None:
        bar.close()


def directory_runs(out: Path, t_ident: dict) -> tuple[list[tuple[str, dict]], dict]:
    """``([(label, meta)], skipped)``: labels under ``out/records`` computed for this task identity.

    Runs come in the order they were first started in the directory, so the first one (the
    baseline of the paired tests) does not change when a later invocation adds runs.
    """
    want = flatten({"task": t_ident})
    runs, skipped = {}, {}
    for meta_path in sorted((out / "records").glob("*.meta.json")):
        label = meta_path.name[: -len(".meta.json")]
        meta = load_meta(meta_path)
        if meta is None:
            skipped[label] = "unreadable or old-format meta.json"
            continue
        fp = meta["fingerprint"]
        task_keys = set(want) | {k for k in fp if k == "task" or k.startswith("task.")}
        diff = sorted(k for k in task_keys if fp.get(k, "<absent>") != want.get(k, "<absent>"))
        if diff:
            skipped[label] = f"different {', '.join(diff[:3])}"
            continue
        runs[label] = meta
    order = sorted(runs, key=lambda lab: (runs[lab].get("created", 0.0), lab))
    return [(lab, runs[lab]) for lab in order], skipped


def build_summary(task, out: Path, ids: list, *, seed: int = 0, model_name: str = "") -> dict:
    """summary.json from every compatible record set in ``out`` (restricted to this task's items)."""
    from contrastkit import eval as _  # noqa: F401  (task registry)
    from contrastkit.eval.report import item_statistics, paired_tests

    runs, skipped = directory_runs(out, task_identity(task))
    item_metrics = list(getattr(task, "item_metrics", []))
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": task.name, "task_config": task.config(), "model": model_name,
        "seed": seed, "n_items": len(ids), "versions": versions(), "git_commit": git_commit(),
        "dataset": task.dataset_info() if hasattr(task, "dataset_info") else None,
        "warnings": list(task.warnings()) if hasattr(task, "warnings") else [],
        "metric_labels": dict(getattr(task, "metric_labels", {})), "metric_help": dict(getattr(task, "metric_help", {})),
        "higher_is_better": dict(getattr(task, "higher_is_better", {})),
        "metric_scale": dict(getattr(task, "metric_scale", {})),
        "item_metrics": item_metrics, "strategies": {}, "other_runs": skipped}
    per_item: dict[str, dict] = {}
    for label, meta in runs:
        cached = load_records(out / "records" / f"{label}.jsonl")
        records = [cached[i] for i in ids if i in cached]
        if not records:
            continue
        spec = StrategySpec(**meta["spec"])
        spec.label = label
        metrics = task.summarize(spec, records)
        total_time = sum(float(r.get("time_s", 0.0)) for r in records)
        summary["strategies"][label] = {
            **spec.to_dict(), "model": meta.get("model_name", ""), "metrics": metrics, "n_items": len(records),
            "stats": item_statistics(records, item_metrics), "time_s": total_time,
            "items_per_s": len(records) / total_time if total_time else None}
        if hasattr(task, "run_warnings"):
            summary["warnings"] += [f"{label}: {w}" for w in task.run_warnings(spec)]
        if hasattr(task, "breakdown"):
            summary["strategies"][label]["breakdown"] = task.breakdown(records)
        per_item[label] = {r["id"]: r for r in records}
        if len(records) < len(ids):
            summary["warnings"].append(f"{label}: {len(records)} of {len(ids)} items computed")
    summary["paired"] = paired_tests(per_item, item_metrics)
    return summary


def write_reports(summary: dict, out: Path, columns: list[str] | None, plot_specs: list) -> None:
    import json

    from contrastkit.eval.report import atomic_write_text, markdown_table, write_plots

    summary["plots"] = write_plots(summary, out, plot_specs)
    atomic_write_text(out / "results.md", markdown_table(summary, columns))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
