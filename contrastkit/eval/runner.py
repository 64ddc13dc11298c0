"""One resumable runner for every eval task: strategies x task -> records, summary, table, plots.

A *task* is any object with::

    name: str
    def config(self) -> dict                            # JSON-able; part of the cache fingerprint
    def items(self) -> list[dict]                        # each with a unique "id"
    def run_items(self, spec: StrategySpec, items) -> list[dict]   # one record per item, same order
    def summarize(self, spec: StrategySpec, records) -> dict[str, float]
    report_columns: list[str]                           # metrics shown in the Markdown table
    plots: list[tuple[str, ...]]                         # ("bar", metric, ...) or ("scatter", x, y)

Output directory layout::

    records/<label>.jsonl   per-item records, appended (flushed + fsynced) as each chunk finishes
    records/<label>.meta.json   the fingerprint the cache was computed with
    summary.json  results.md  <plot>.png

Resuming: items whose id is already in ``records/<label>.jsonl`` are never recomputed; a line
cut short by a kill is dropped. A cache computed with another configuration (task config,
strategy params, model, seed) is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contrastkit.errors import UsageError


@dataclass
class StrategySpec:
    """One column of the comparison: a registered strategy with its parameters."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "params": _jsonable(self.params)}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value) if not hasattr(value, "name_or_path") else str(value.name_or_path)


def parse_strategies(names: str | list[str], strategy_args: dict | None = None,
                     common: dict | None = None) -> list[StrategySpec]:
    """``"greedy,icd"`` + ``{"icd": {"amateur": ...}}`` -> validated :class:`StrategySpec` list.

    ``common`` parameters (e.g. ``amateur``) go to every strategy whose config has that field.
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
    strategy_args = strategy_args or {}
    for key in strategy_args:
        if key not in names:
            raise UsageError(f"--strategy_args names '{key}', which is not in --strategies {','.join(names)}")
    specs = []
    for name in names:
        strat = get_strategy(name)
        fields = {f.name for f in dataclasses.fields(strat.config_cls)}
        params = {k: v for k, v in (common or {}).items() if k in fields and v is not None}
        params.update(strategy_args.get(name, {}))
        strat.make_config(**params)  # validate now, before any model work
        specs.append(StrategySpec(name, name, params))
    return specs


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("contrastkit", "torch", "transformers", "mauve-text", "sacrebleu", "rouge-score"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class RecordCache:
    """Append-only JSONL of finished per-item records for one strategy."""

    def __init__(self, path: Path, fingerprint: dict, overwrite: bool = False):
        self.path, self.meta = path, path.with_suffix(".meta.json")
        if overwrite:
            for p in (self.path, self.meta):
                p.unlink(missing_ok=True)
        if self.meta.exists():
            old = json.loads(self.meta.read_text())
            if old != fingerprint:
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise UsageError(f"{self.path} was computed with a different {', '.join(diff)}; use another "
                                 f"--output_dir or --overwrite to recompute")
        else:
            self.path.unlink(missing_ok=True)
            self.meta.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        self.records: dict[Any, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: everything after it is dropped
                if not line.endswith("\n"):
                    break
                self.records[rec["id"]] = rec
                good.append(line)
        with open(self.path, "w", encoding="utf-8") as f:  # rewrite without the torn tail
            f.writelines(good)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[r["id"]] = r


def run_evaluation(task, specs: list[StrategySpec], output_dir: str | Path, *, chunk_size: int = 8,
                   seed: int = 0, overwrite: bool = False, progress: bool = True, model_name: str = "",
                   on_chunk: Callable[[str, int], None] | None = None, plots: bool = True) -> dict:
    """Run every strategy over the task's items with per-item caching; write summary, table and plots.

    Args:
        task: see the module docstring.
        specs: strategies to compare (``parse_strategies``).
        output_dir: created if missing; holds the caches and reports.
        chunk_size: items per ``task.run_items`` call (= per cache flush).
        on_chunk: called as ``on_chunk(label, n_done)`` after each flushed chunk (tests use it to interrupt).

    Returns:
        The summary dict (also written to ``summary.json``).
    """
    out = Path(output_dir)
    (out / "records").mkdir(parents=True, exist_ok=True)
    items = task.items()
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise UsageError("task items must have unique ids")
    summary: dict[str, Any] = {"task": task.name, "task_config": task.config(), "model": model_name, "seed": seed,
                               "n_items": len(items), "versions": versions(), "strategies": {}}
    for spec in specs:
        fingerprint = {"task": task.name, "task_config": task.config(), "strategy": spec.to_dict(),
                       "model": model_name, "seed": seed}
        cache = RecordCache(out / "records" / f"{spec.label}.jsonl", _jsonable(fingerprint), overwrite)
        _run_strategy(task, spec, items, cache, chunk_size, progress, on_chunk)
        records = [cache.records[i] for i in ids]
        metrics = task.summarize(spec, records)
        total_time = sum(float(r.get("time_s", 0.0)) for r in records)
        summary["strategies"][spec.label] = {**spec.to_dict(), "metrics": metrics, "n_items": len(records),
                                             "time_s": total_time,
                                             "items_per_s": len(records) / total_time if total_time else None}
    write_reports(summary, out, getattr(task, "report_columns", None), getattr(task, "plots", []) if plots else [])
    return summary


def _run_strategy(task, spec, items, cache, chunk_size, progress, on_chunk) -> None:
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
            rec.setdefault("time_s", elapsed / len(chunk))
        cache.append(records)
        if bar is not None:
            bar.update(len(chunk))
        if on_chunk is not None:
            on_chunk(spec.label, len(cache.records))
    if bar is not None:
        bar.close()


def write_reports(summary: dict, out: Path, columns: list[str] | None, plot_specs: list) -> None:
    from contrastkit.eval.report import atomic_write_text, markdown_table, write_plots

    summary["plots"] = write_plots(summary, out, plot_specs)
    atomic_write_text(out / "results.md", markdown_table(summary, columns))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
