"""``contrastkit strategies``: list registered decoding strategies with their parameters and defaults."""

from __future__ import annotations

import json
import sys

from contrastkit.cli.common import ArgumentParser, run_command

PROG = "contrastkit strategies"


def run(argv: list[str]) -> int:
    parser = ArgumentParser(prog=PROG, description="List registered decoding strategies.", run_flags=False)
    parser.add_argument("names", nargs="*", help="Only these strategies.")
    parser.add_argument("--json", action="store_true", help="Machine-readable output.")
    args = parser.parse_args(argv)

    import contrastkit.decoding  # noqa: F401  (registers the built-in strategies)
    from contrastkit.decoding.base import get_strategy
    from contrastkit.registry import DECODERS

    names = args.names or DECODERS.names()
    strategies = [get_strategy(n) for n in names]
    if args.json:
        out = {s.name: {"summary": s.summary, "scoring_rule": "custom" if s.scorer else "log-prob",
                        "parameters": {p: {"type": t, "default": d, "help": h} for p, t, d, h in s.parameters()}}
               for s in strategies}
        print(json.dumps(out, indent=2, default=str))
        return 0
    for s in strategies:
        print(f"{s.name}: {s.summary}")
        params = s.parameters()
        if not params:
            print("    (no parameters)")
        for p, t, d, h in params:
            print(f"    --{p:<22} {t:<14} default {d!r:<10} {h}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_command(PROG, lambda: run(argv))
