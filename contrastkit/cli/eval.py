"""``contrastkit eval <task>``: evaluation commands, each in its own module with ``main(argv)``."""

from __future__ import annotations

import sys

from contrastkit.cli.main import dispatch

TASKS = {
    "truthfulqa": ("contrastkit.cli.eval_truthfulqa", "TruthfulQA MC1/MC2/MC3 and generation"),
    "open-ended": ("contrastkit.cli.eval_open_ended", "rep-n, diversity, MAUVE, coherence on text prefixes"),
    "compare": ("contrastkit.cli.eval_compare", "one table and plot across finished runs, with paired tests"),
}


def main(argv: list[str]) -> int:
    return dispatch("contrastkit eval", TASKS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
