"""Reports of an eval run: a Markdown table and PNG plots (matplotlib, Agg backend).

``summary`` is the dict :func:`contrastkit.eval.runner.run_evaluation` writes to ``summary.json``:
``summary["strategies"][label]["metrics"]`` maps metric names to numbers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SETTINGS_SHOWN = ("preset", "chat", "featurizer", "data", "max_new_tokens", "prefix_tokens", "limit")


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


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def markdown_table(summary: dict, columns: list[str] | None = None) -> str:
    """One row per strategy, one column per metric, plus throughput; settings listed above the table."""
    strategies = summary.get("strategies", {})
    if columns is None:
        columns = sorted({k for s in strategies.values() for k in s.get("metrics", {})})
    cfg = summary.get("task_config", {})
    lines = [f"# {summary.get('task', 'eval')}: {summary.get('model', '')}", ""]
    for key in SETTINGS_SHOWN:
        if key in cfg:
            lines.append(f"- {key}: `{cfg[key]}`")
    lines += [f"- items: {summary.get('n_items')}, seed: {summary.get('seed')}", ""]
    header = ["strategy", "params", *columns, "items/s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for label, s in strategies.items():
        params = ", ".join(f"{k}={v}" for k, v in s.get("params", {}).items()) or "-"
        row = [label, params, *(_fmt(s.get("metrics", {}).get(c)) for c in columns), _fmt(s.get("items_per_s"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_plots(summary: dict, out: Path, specs: list) -> list[str]:
    """Draw each plot spec, ``("bar", metric, ...)`` or ``("scatter", x_metric, y_metric)``; returns file names."""
    if not specs or not summary.get("strategies"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["strategies"])
    metrics = {k: summary["strategies"][k].get("metrics", {}) for k in labels}
    written = []
    for kind, *names in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        if kind == "bar":
            width = 0.8 / max(len(names), 1)
            for j, name in enumerate(names):
                xs = [i + j * width for i in range(len(labels))]
                ax.bar(xs, [metrics[k].get(name) or 0.0 for k in labels], width, label=name)
            ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(labels))], labels)
            ax.legend()
            fname = "_".join(names) + ".png"
        else:
            x, y = names
            for k in labels:
                if metrics[k].get(x) is None or metrics[k].get(y) is None:
                    continue  # e.g. MAUVE switched off
                ax.scatter(metrics[k][x], metrics[k][y])
                ax.annotate(k, (metrics[k][x], metrics[k][y]))
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            fname = f"{y}_vs_{x}.png"
        ax.set_title(f"{summary.get('task')} ({summary.get('model')})")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        written.append(fname)
    return written
