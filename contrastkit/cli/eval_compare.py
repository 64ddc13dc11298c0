"""``contrastkit eval compare DIR [DIR ...]``: one table and one plot across finished eval runs, with paired tests.

Example::

    contrastkit eval compare runs/tqa_greedy runs/tqa_icd --baseline tqa_greedy/greedy --output_dir runs/cmp

Every run in every directory is a row (``<dir>/<label>`` with several directories): metric means
with standard errors and 95% bootstrap CIs, and each run against the baseline (default: the
first) on the items both scored (paired bootstrap and sign test p-values). Works for any task
the runner wrote (TruthfulQA MC/generation, open-ended, other teams' tasks).
"""

from __future__ import annotations

import sys

from contrastkit.cli.common import ArgumentParser, run_command

PROG = "contrastkit eval compare"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Compare finished eval runs: table, plot, paired tests.")
    p.add_argument("dirs", nargs="+", help="output directories of 'contrastkit eval ...' runs")
    p.add_argument("--output_dir", default="eval_compare", help="where compare.md/.json/.png go (default: eval_compare)")
    p.add_argument("--baseline", default=None, help="run every other run is tested against (default: the first)")
    p.add_argument("--metrics", default=None, help="comma-separated metrics to show (default: the per-item metrics)")
    return p


def run(argv: list[str]) -> int:
    from pathlib import Path

    from contrastkit.eval.compare import compare

    args = build_parser().parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    summary = compare(args.dirs, args.output_dir, baseline=args.baseline, metrics=metrics)
    print((Path(args.output_dir) / "compare.md").read_text())
    print(f"wrote {args.output_dir}/compare.md, compare.json, {', '.join(summary.get('plots', []))}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
