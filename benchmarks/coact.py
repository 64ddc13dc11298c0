"""CoACT vs the prototype and naive-LoRA baselines (and ablations) on CLINC150 with the embedded MiniLM, on CPU.

    .venv/bin/python benchmarks/coact.py --clinc ../shared/data/clinc150/data_full.json \\
        --output_dir /tmp/coact_bench --json /tmp/coact_bench.json

Runs ``contrastkit train coact``'s code path (same runner, reports and checkpoints) for every
method and seed, then prints (1) the accuracy table (mean ± s.e. over seeds), with each method's
average accuracy as a ratio to the ``prototype`` baseline measured in the same run, and (2) wall time
per session per method (mean over seeds) with the ratio to ``prototype``. The default sizes are the
ones that fit ~15 min of a shared 2-core CPU; the issue's full protocol is
``--base_shots 0 --sessions 9 --test_per_class 0 --seeds 0,1,2`` (0 = all).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clinc", required=True, help="CLINC150 data_full.json (github clinc/oos-eval)")
    p.add_argument("--methods", default="coact,prototype,finetune")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--base_classes", type=int, default=60)
    p.add_argument("--base_shots", type=int, default=10, help="0 = all 100 per class")
    p.add_argument("--ways", type=int, default=10)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--test_per_class", type=int, default=5, help="0 = all 30")
    p.add_argument("--base_epochs", type=int, default=2)
    p.add_argument("--inc_epochs", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=0.05)
    p.add_argument("--max_length", type=int, default=32)
    p.add_argument("--output_dir", default=None, help="checkpoints and reports (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write all results here")
    return p.parse_args(argv)


def _to_jsonl(clinc: str, folder: Path) -> tuple[str, str]:
    data = json.loads(Path(clinc).read_text())
    paths = []
    for split in ("train", "test"):
        path = folder / f"clinc_{split}.jsonl"
        with open(path, "w") as f:
            for text, intent in data[split]:
                f.write(json.dumps({"text": text, "intent": intent}) + "\n")
        paths.append(str(path))
    return paths[0], paths[1]


def _wall_table(runs: dict) -> str:
    base = runs.get("prototype")
    n = max(len(s) for by in runs.values() for s in by.values())
    lines = ["| method | " + " | ".join(f"s{i} wall s" for i in range(n)) + " | total s | × prototype |",
             "|---|" + "---|" * (n + 2)]
    def mean_wall(by, i):
        vals = [s[i]["wall_s"] for s in by.values() if len(s) > i and "wall_s" in s[i]]
        return sum(vals) / len(vals) if vals else float("nan")
    base_total = sum(mean_wall(base, i) for i in range(n)) if base else None
    for method, by in runs.items():
        walls = [mean_wall(by, i) for i in range(n)]
        ratio = f"{sum(walls) / base_total:.1f}" if base_total else "-"
        lines.append(f"| {method} | " + " | ".join(f"{w:.1f}" for w in walls) + f" | {sum(walls):.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from contrastkit.cli import train_coact

    tmp = tempfile.TemporaryDirectory()
    train_file, test_file = _to_jsonl(args.clinc, Path(tmp.name))
    out = args.output_dir or str(Path(tmp.name) / "runs")
    flags = ["--train_file", train_file, "--test_file", test_file, "--methods", args.methods, "--seeds", args.seeds,
             "--base_classes", str(args.base_classes), "--ways", str(args.ways), "--shots", str(args.shots),
             "--sessions", str(args.sessions), "--base_epochs", str(args.base_epochs),
             "--inc_epochs", str(args.inc_epochs), "--learning_rate", str(args.learning_rate),
             "--max_length", str(args.max_length), "--output_dir", out, "--progress", "false"]
    if args.base_shots:
        flags += ["--base_shots", str(args.base_shots)]
    if args.test_per_class:
        flags += ["--test_per_class", str(args.test_per_class)]
    rc = train_coact.main(flags)
    if rc:
        return rc
    summary = json.loads((Path(out) / "summary.json").read_text())
    runs = {m: by for m, by in summary["runs"].items()}
    agg = summary["aggregate"]
    proto = agg.get("prototype", {}).get("summary", {}).get("avg_acc", {}).get("mean")
    print("\naverage accuracy over sessions, ratio to prototype (same run):")
    for m, v in agg.items():
        a = v["summary"]["avg_acc"]["mean"]
        print(f"  {m:<24} {100 * a:.1f}%" + (f"  × {a / proto:.3f}" if proto else ""))
    print("\nwall time per session (mean over seeds; shared CPU):")
    print(_wall_table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
