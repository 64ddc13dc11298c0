"""Reports of CoACT protocol runs: summary.json, a Markdown table and an accuracy-per-session plot.

Spreads over seeds come from :func:`contrastkit.eval.stats.summarize` (mean, standard error, bootstrap
CI). With one seed the standard error is NaN and the CI collapses to the value; the table says n.
"""

from __future__ import annotations

import math
from pathlib import Path

from contrastkit.alignment.coact_protocol import run_summary

__all__ = ["aggregate", "markdown_table", "plot_sessions"]

_KEYS = ("avg_acc", "final_acc", "final_acc_base", "final_acc_new", "drop", "base_forgetting")


def aggregate(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """``runs[method][seed]`` = per-session metrics -> per-run summaries and per-method spreads over seeds."""
    from contrastkit.eval.stats import summarize

    out = {}
    for method, by_seed in runs.items():
        per_seed = {seed: run_summary(sessions) for seed, sessions in by_seed.items() if sessions}
        n_sessions = min(len(s) for s in by_seed.values())
        sessions = [summarize([by_seed[seed][s]["acc"] for seed in by_seed]) for s in range(n_sessions)]
        overall = {k: summarize([v[k] for v in per_seed.values() if v[k] is not None])
                   for k in _KEYS if any(v[k] is not None for v in per_seed.values())}
        out[method] = {"seeds": sorted(by_seed), "per_seed": {str(k): v for k, v in per_seed.items()},
                       "sessions": sessions, "summary": overall}
    return out


def _pct(stat: dict | None) -> str:
    if not stat:
        return "-"
    text = f"{100 * stat['mean']:.1f}"
    if stat["n"] > 1 and not math.isnan(stat["stderr"]):
        text += f" ± {100 * stat['stderr']:.1f}"
    return text


def markdown_table(agg: dict) -> str:
    """Accuracy (%) per session and the summary columns, mean ± standard error over seeds."""
    n_sessions = max(len(v["sessions"]) for v in agg.values())
    head = ["method", "seeds"] + [f"s{s}" for s in range(n_sessions)] + ["avg", "final", "base (final)",
                                                                        "new (final)", "drop", "base forgetting"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, v in agg.items():
        cells = [method, str(len(v["seeds"]))] + [_pct(s) for s in v["sessions"]]
        cells += ["-"] * (n_sessions - len(v["sessions"]))
        cells += [_pct(v["summary"].get(k)) for k in _KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sessions(agg: dict, path: str | Path, title: str = "") -> bool:
    """Accuracy per session with a band of ± one standard error over seeds; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, v in agg.items():
        xs = list(range(len(v["sessions"])))
        mean = [100 * s["mean"] for s in v["sessions"]]
        err = [0.0 if math.isnan(s["stderr"]) else 100 * s["stderr"] for s in v["sessions"]]
        ax.plot(xs, mean, marker="o", label=f"{method} (n={len(v['seeds'])})")
        ax.fill_between(xs, [m - e for m, e in zip(mean, err)], [m + e for m, e in zip(mean, err)], alpha=0.2)
    ax.set_xticks(range(max(len(v["sessions"]) for v in agg.values())))
    ax.set_xlabel("session")
    ax.set_ylabel("accuracy on all seen classes (%)")
    ax.set_title(title or "few-shot class-incremental accuracy (mean ± s.e. over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
