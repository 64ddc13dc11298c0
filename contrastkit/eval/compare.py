"""Compare finished eval runs across output directories: one table, one plot, paired tests.

Each directory is a ``contrastkit eval ...`` output (``summary.json`` + ``records/``). Every run
(label) in every directory becomes a row, named ``<dir>/<label>`` when several directories are
given, where ``<dir>`` is the directory's name, or as many of its trailing path parts as make it
unique (``exp1/out/greedy`` and ``exp2/out/greedy``); a directory given twice is an error.
Metrics with per-item values (the task's ``item_metrics``, recorded in ``summary.json``)
get a standard error and a bootstrap CI, and every run is compared with the baseline on the
items both have (paired bootstrap and sign test, :mod:`contrastkit.eval.stats`). Items are
matched by id *and* by the stored item text (``item_key``), so runs over different data
revisions are never paired by position. Generic over tasks and metrics: anything the runner
writes can be compared (other teams' tasks included).
"""

from __future__ import annotations

import json
from pathlib import Path

from contrastkit.errors import UsageError, did_you_mean
from contrastkit.eval.cache import load_records


def _load_dir(path: Path) -> dict:
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        what = "does not exist" if not path.exists() else "has no summary.json"
        raise UsageError(f"'{path}' {what}: give output directories of 'contrastkit eval ...' runs")
    try:
        return json.loads(summary_path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{summary_path}:{e.lineno}: malformed JSON ({e.msg})") from None


def dir_names(paths: list[Path]) -> list[str]:
    """A unique display name per run directory: the fewest trailing path parts that tell them apart."""
    resolved = [p.resolve() for p in paths]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise UsageError(f"'{paths[i]}' is given twice (as '{paths[resolved.index(r)]}'): give each run "
                             f"directory once")
    for k in range(1, max(len(r.parts) for r in resolved) + 1):
        names = ["/".join(r.parts[-k:]) if len(r.parts) > 1 else str(r) for r in resolved]
        if len(set(names)) == len(names):
            return names
    return [str(r) for r in resolved]


def collect(dirs: list[str | Path]) -> tuple[dict, dict[str, dict]]:
    """``(summary, per_item)``: a report summary over every run of every directory and their records by item."""
    from contrastkit.eval.report import item_statistics

    if not dirs:
        raise UsageError("give at least one run directory")
    paths = [Path(d) for d in dirs]
    loaded = [(p, _load_dir(p)) for p in paths]
    names = dict(zip(paths, dir_names(paths)))
    tasks = {s.get("task") for _, s in loaded}
    if len(tasks) > 1:
        raise UsageError(f"runs of different tasks cannot be compared: {sorted(map(str, tasks))}")
    first = loaded[0][1]
    from contrastkit.eval.runner import git_commit, versions

    merged = {"task": f"compare {first.get('task')}", "model": "", "strategies": {}, "warnings": [],
              "versions": versions(), "git_commit": git_commit(),
              "item_metrics": [], "metric_labels": {}, "metric_help": {}, "higher_is_better": {}, "metric_scale": {},
              "sources": [str(p) for p in paths]}
    for p, s in loaded:
        for key in ("metric_labels", "metric_help", "higher_is_better", "metric_scale"):
            merged[key].update(s.get(key, {}))
        prefix = f"{names[p]}: " if len(paths) > 1 else ""
        merged["warnings"] += [prefix + w for w in s.get("warnings", []) if prefix + w not in merged["warnings"]]
        merged["item_metrics"] += [m for m in s.get("item_metrics", []) if m not in merged["item_metrics"]]
    shas = {json.dumps((s.get("dataset") or {}).get("sha256")) for _, s in loaded}
    if len(shas) > 1:
        merged["warnings"].append("the directories scored different data files: only items with the same id and "
                                  "text are paired")
    per_item: dict[str, dict] = {}
    for p, s in loaded:
        for label, run in s.get("strategies", {}).items():
            name = f"{names[p]}/{label}" if len(paths) > 1 else label
            records = load_records(p / "records" / f"{label}.jsonl")
            entry = {k: run.get(k) for k in ("name", "params", "model", "items_per_s")}
            # per-item metrics from every record of the run (mean, stderr and CI over the same items);
            # corpus-level metrics (e.g. MAUVE) as the run's own report computed them
            entry["stats"] = item_statistics(list(records.values()), merged["item_metrics"])
            entry["metrics"] = {**(run.get("metrics") or {}), **{m: st["mean"] for m, st in entry["stats"].items()}}
            entry["n_items"] = len(records) if entry["stats"] else run.get("n_items")
            entry["source"] = str(p)
            merged["strategies"][name] = entry
            per_item[name] = {(rid, rec.get("item_key")): rec for rid, rec in records.items()}
    models = {e.get("model") for e in merged["strategies"].values()}
    merged["model"] = ", ".join(sorted(str(m) for m in models if m)) if len(models) <= 3 else "several models"
    merged["n_items"] = max((e.get("n_items") or 0 for e in merged["strategies"].values()), default=0)
    return merged, per_item


def compare(dirs: list[str | Path], output_dir: str | Path, *, baseline: str | None = None,
            metrics: list[str] | None = None) -> dict:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` to ``output_dir``; returns the summary."""
    from contrastkit.eval.report import atomic_write_text, markdown_table, paired_tests, write_plots

    summary, per_item = collect(dirs)
    if baseline is not None and baseline not in per_item:
        raise UsageError(f"--baseline '{baseline}' is not a run here.{did_you_mean(baseline, per_item)} "
                         f"Runs: {', '.join(per_item)}")
    known = sorted({m for e in summary["strategies"].values() for m in (e.get("metrics") or {})})
    for m in metrics or []:
        if m not in known:
            raise UsageError(f"unknown metric '{m}'.{did_you_mean(m, known)} Known: {', '.join(known)}")
    columns = metrics or [m for m in summary["item_metrics"] if m in known] or known
    if baseline is not None:  # baseline first: the table and the plot list it first
        summary["strategies"] = {baseline: summary["strategies"][baseline],
                                 **{k: v for k, v in summary["strategies"].items() if k != baseline}}
    summary["paired"] = paired_tests(per_item, [m for m in columns if m in summary["item_metrics"]],
                                     baseline=baseline)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(summary, out, [("bar", *columns[:4])])
    if plots:
        (out / plots[0]).replace(out / "compare.png")
        summary["plots"] = ["compare.png"]
    atomic_write_text(out / "compare.md", markdown_table(summary, columns))
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=2, default=str))
    return summary
