"""Reports of an eval run: per-item statistics, paired tests, a Markdown table and PNG plots (Agg).

``summary`` is the dict :func:`contrastkit.eval.runner.run_evaluation` writes to ``summary.json``:
``summary["strategies"][label]`` holds ``metrics`` (name -> number), ``stats`` (name -> mean,
stderr, bootstrap CI, n, for metrics with per-item values) and the run's strategy and params;
``summary["paired"]`` the paired comparisons against the first run. Uncertainty comes from
:mod:`contrastkit.eval.stats` (stderr with ddof=1 as lm-eval reports it; percentile bootstrap).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

SETTINGS_SHOWN = ("preset", "gen_preset", "chat", "featurizer", "data", "max_new_tokens", "prefix_tokens", "start",
                  "limit")
N_BOOT = 2000


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + rename (no partial file on error)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _values(records: list[dict], metric: str) -> list[float]:
    return [float(r[metric]) for r in records if isinstance(r.get(metric), (int, float))]


def item_statistics(records: list[dict], metrics: list[str], seed: int = 0) -> dict[str, dict]:
    """Per metric: ``{"mean", "stderr", "ci_lo", "ci_hi", "n"}`` over the records' per-item values."""
    from contrastkit.eval.stats import summarize

    out = {}
    for m in metrics:
        vals = _values(records, m)
        if vals:
            out[m] = summarize(vals, n_boot=N_BOOT, seed=seed)
    return out


def paired_tests(per_item: dict[str, dict], metrics: list[str], baseline: str | None = None) -> list[dict]:
    """Every run against ``baseline`` (default: the first) on the items both have, per metric.

    Each row: ``{"run", "baseline", "metric", "n", "diff", "lo", "hi", "p_value"}`` (paired bootstrap of
    run - baseline) plus ``"sign": {"wins", "losses", "ties", "p_value"}`` (exact sign test).
    """
    from contrastkit.eval.stats import paired_bootstrap, sign_test

    labels = list(per_item)
    if len(labels) < 2:
        return []
    base = baseline or labels[0]
    rows = []
    for label in labels:
        if label == base:
            continue
        for m in metrics:
            common = [i for i in per_item[base] if i in per_item[label]
                      and isinstance(per_item[base][i].get(m), (int, float))
                      and isinstance(per_item[label][i].get(m), (int, float))]
            if len(common) < 2:
                continue
            a = [float(per_item[label][i][m]) for i in common]
            b = [float(per_item[base][i][m]) for i in common]
            boot = paired_bootstrap(a, b, n_boot=N_BOOT, seed=0)
            rows.append({"run": label, "baseline": base, "metric": m, **boot, "sign": sign_test(a, b)})
    return rows


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def _scaled(summary: dict, metric: str, value):
    k = summary.get("metric_scale", {}).get(metric, 1.0)
    return value * k if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _cell(summary: dict, s: dict, metric: str) -> str:
    value = _scaled(summary, metric, s.get("metrics", {}).get(metric))
    st = s.get("stats", {}).get(metric)
    if st is None:
        return _fmt(value)
    lo, hi, se = (_scaled(summary, metric, st[k]) for k in ("ci_lo", "ci_hi", "stderr"))
    return f"{_fmt(value)} ±{_fmt(se)} [{_fmt(lo)}, {_fmt(hi)}]"


def metric_label(summary: dict, metric: str) -> str:
    return summary.get("metric_labels", {}).get(metric, metric)


def _settings(summary: dict) -> list[str]:
    cfg = summary.get("task_config", {})
    lines = [f"- {key}: `{cfg[key]}`" for key in SETTINGS_SHOWN if key in cfg and cfg[key] is not None]
    ds = summary.get("dataset")
    if ds:
        lines.append(f"- dataset: `{ds.get('file')}`, revision `{ds.get('revision')}`, {ds.get('n_questions')} "
                     f"questions, sha256 `{str(ds.get('sha256'))[:12]}`")
    seed = f", seed: {summary['seed']}" if summary.get("seed") is not None else ""
    lines.append(f"- items: {summary.get('n_items')}{seed}, contrastkit "
                 f"{summary.get('versions', {}).get('contrastkit', '?')} (commit {str(summary.get('git_commit'))[:10]})")
    if summary.get("sources"):
        lines.append(f"- runs from: {', '.join(f'`{x}`' for x in summary['sources'])} (every record of each run)")
    return lines


def markdown_table(summary: dict, columns: list[str] | None = None) -> str:
    """One row per run, one column per metric (mean ±stderr [95% bootstrap CI]), paired tests, definitions."""
    strategies = summary.get("strategies", {})
    if columns is None:
        columns = sorted({k for s in strategies.values() for k in s.get("metrics", {})})
    columns = [c for c in columns if any(s.get("metrics", {}).get(c) is not None for s in strategies.values())]
    lines = [f"# {summary.get('task', 'eval')}: {summary.get('model', '')}", "", *_settings(summary), ""]
    for w in summary.get("warnings", []):
        lines.append(f"> **warning:** {w}")
    if summary.get("warnings"):
        lines.append("")
    models = {s.get("model") for s in strategies.values()}
    header = ["run", "strategy", "params", *(["model"] if len(models) > 1 else []),
              *(metric_label(summary, c) for c in columns), "n", "items/s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for label, s in strategies.items():
        params = ", ".join(f"{k}={v}" for k, v in s.get("params", {}).items()) or "-"
        row = [label, s.get("name", label), params, *([str(s.get("model"))] if len(models) > 1 else []),
               *(_cell(summary, s, c) for c in columns), str(s.get("n_items")), _fmt(s.get("items_per_s"))]
        lines.append("| " + " | ".join(row) + " |")
    if any(s.get("stats") for s in strategies.values()):
        lines += ["", "Cells: mean ±standard error (ddof=1, as lm-eval) [95% percentile bootstrap CI, "
                      f"{N_BOOT} resamples of the items]."]
    lines += paired_markdown(summary.get("paired", []), summary)
    lines += breakdown_markdown(summary)
    helps = summary.get("metric_help", {})
    shown = [c for c in columns if c in helps]
    if shown:
        lines += ["", "## Metrics", ""] + [f"- `{metric_label(summary, c)}`: {helps[c]}" for c in shown]
    if summary.get("other_runs"):
        lines += ["", "Not in this table (computed for another task setup): " + "; ".join(
            f"`{k}` ({v})" for k, v in summary["other_runs"].items())]
    return "\n".join(lines) + "\n"


def paired_markdown(rows: list[dict], summary: dict) -> list[str]:
    if not rows:
        return []
    out = ["", f"## Paired comparisons against `{rows[0]['baseline']}` (same items)", "",
           "| run | metric | diff (run - baseline) | 95% CI | p (paired bootstrap) | wins/losses/ties | p (sign test) | n |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sg = r["sign"]
        out.append(f"| {r['run']} | {metric_label(summary, r['metric'])} | {r['diff']:+.4f} | [{r['lo']:+.4f}, "
                   f"{r['hi']:+.4f}] | {r['p_value']:.4f} | {sg['wins']}/{sg['losses']}/{sg['ties']} | "
                   f"{sg['p_value']:.4f} | {r['n']} |")
    return out


def breakdown_markdown(summary: dict, key: str = "category") -> list[str]:
    """Per-category table (TruthfulQA ``Category``/``Type``): rows = groups, columns = runs, cell = first metric."""
    runs = {k: s["breakdown"][key] for k, s in summary.get("strategies", {}).items() if s.get("breakdown", {}).get(key)}
    metric = next(iter(summary.get("item_metrics", [])), None)
    if not runs or metric is None:
        return []
    groups = sorted({g for b in runs.values() for g in b})
    out = ["", f"## {metric_label(summary, metric)} by {key} (n per group in parentheses)", "",
           "| " + " | ".join([key, *runs]) + " |", "|" + "---|" * (len(runs) + 1)]
    for g in groups:
        cells = [f"{_fmt(b[g].get(metric))} ({b[g]['n']})" if g in b else "-" for b in runs.values()]
        out.append("| " + " | ".join([g, *cells]) + " |")
    return out


def _direction(summary: dict, metric: str) -> str:
    better = summary.get("higher_is_better", {}).get(metric)
    return "" if better is None else (" (higher is better)" if better else " (lower is better)")


def write_plots(summary: dict, out: Path, specs: list) -> list[str]:
    """Draw each plot spec, ``("bar", metric, ...)`` or ``("scatter", x_metric, y_metric)``; returns file names.

    Bars carry 95% bootstrap CIs as error bars where per-item values exist; every axis names its
    quantity and which direction is better; scatter points are told apart by a legend, not by
    text placed next to them (labels never overlap).
    """
    if not summary.get("strategies"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["strategies"])
    runs = summary["strategies"]
    written = []
    for kind, *names in specs:
        if not any(runs[k].get("metrics", {}).get(n) is not None for k in labels for n in names):
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) + 2), 4.5))
        if kind == "bar":
            width = 0.8 / max(len(names), 1)
            for j, name in enumerate(names):
                xs = [i + j * width for i in range(len(labels))]
                ys = [_scaled(summary, name, runs[k].get("metrics", {}).get(name) or 0.0) for k in labels]
                err = _error_bars(runs, labels, name, [runs[k].get("metrics", {}).get(name) or 0.0 for k in labels],
                                  summary.get("metric_scale", {}).get(name, 1.0))
                ax.bar(xs, ys, width, yerr=err, capsize=3, label=metric_label(summary, name))
            ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(labels))], labels,
                          rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
            ax.set_xlabel("run")
            ax.set_ylabel(" / ".join(metric_label(summary, n) for n in names) + _direction(summary, names[0])
                          + ("; bars: 95% CI" if _has_ci(runs, names) else ""), fontsize=8)
            ax.legend(fontsize=8)
            fname = "_".join(names) + ".png"
        else:
            x, y = names
            for i, k in enumerate(labels):
                m = runs[k].get("metrics", {})
                if m.get(x) is None or m.get(y) is None:
                    continue  # e.g. MAUVE switched off
                ax.scatter(_scaled(summary, x, m[x]), _scaled(summary, y, m[y]), marker="osD^v<>p*h"[i % 10], s=60, label=k)
            ax.set_xlabel(metric_label(summary, x) + _direction(summary, x))
            ax.set_ylabel(metric_label(summary, y) + _direction(summary, y))
            ax.legend(fontsize=8, loc="best")
            fname = f"{y}_vs_{x}.png"
        ax.set_title(f"{summary.get('task')} ({summary.get('model')}), n={summary.get('n_items')}")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        written.append(fname)
    if any(s.get("breakdown", {}).get("category") for s in runs.values()) and specs:
        written.append(_category_plot(summary, out, plt))
    return written


def _category_plot(summary: dict, out: Path, plt) -> str:
    """Horizontal bars: the first per-item metric per category, one bar per run, 95% bootstrap CI error bars."""
    runs = {k: s["breakdown"]["category"] for k, s in summary["strategies"].items()
            if s.get("breakdown", {}).get("category")}
    metric = summary["item_metrics"][0]
    groups = sorted({g for b in runs.values() for g in b})
    fig, ax = plt.subplots(figsize=(8, max(4, 0.28 * len(groups) * max(1, len(runs)) ** 0.5 + 1)))
    height = 0.8 / len(runs)
    for j, (label, b) in enumerate(runs.items()):
        ys = [i + j * height for i in range(len(groups))]
        xs = [b.get(g, {}).get(metric, 0.0) for g in groups]
        ci = [(b.get(g, {}).get("stats") or {}).get(metric) or {} for g in groups]  # 95% bootstrap CI per group
        err = [[max(0.0, x - c["ci_lo"]) if c.get("ci_lo") is not None else 0.0 for x, c in zip(xs, ci)],
               [max(0.0, c["ci_hi"] - x) if c.get("ci_hi") is not None else 0.0 for x, c in zip(xs, ci)]]
        ax.barh(ys, xs, height, label=label, xerr=err, error_kw=dict(lw=0.7, capsize=1.5))
    ax.set_yticks([i + height * (len(runs) - 1) / 2 for i in range(len(groups))],
                  [f"{g} (n={max(b.get(g, {}).get('n', 0) for b in runs.values())})" for g in groups], fontsize=7)
    ax.set_xlabel(metric_label(summary, metric) + _direction(summary, metric) + "; bars: 95% bootstrap CI")
    ax.set_ylabel("TruthfulQA category")
    ax.legend(fontsize=7)
    ax.set_title(f"{summary.get('task')} by category ({summary.get('model')})")
    fig.tight_layout()
    fig.savefig(out / "by_category.png", dpi=100)
    plt.close(fig)
    return "by_category.png"


def _has_ci(runs: dict, names) -> bool:
    return any(n in r.get("stats", {}) for r in runs.values() for n in names)


def _error_bars(runs: dict, labels: list[str], name: str, ys: list[float], scale: float = 1.0):
    if not any(name in runs[k].get("stats", {}) for k in labels):
        return None
    lo, hi = [], []
    for k, y in zip(labels, ys):
        st = runs[k].get("stats", {}).get(name)
        lo.append(scale * max(0.0, y - st["ci_lo"]) if st else 0.0)
        hi.append(scale * max(0.0, st["ci_hi"] - y) if st else 0.0)
    return [lo, hi]
