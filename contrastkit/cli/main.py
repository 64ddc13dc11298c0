"""``contrastkit`` entry point: dispatches to one command module, imported only when used.

Each command module exposes ``main(argv: list[str]) -> int``. Commands with sub-commands
(``train``, ``eval``) dispatch the same way through their own table.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from contrastkit.errors import did_you_mean

COMMANDS = {
    "generate": ("contrastkit.cli.generate", "generate text with any registered strategy"),
    "strategies": ("contrastkit.cli.strategies", "list decoding strategies with their parameters"),
    "configs": ("contrastkit.cli.configs", "list the shipped YAML configs (--config NAME), or print one"),
    "score": ("contrastkit.cli.score", "score given continuations under a strategy's rule"),
    "train": ("contrastkit.cli.train", "train: induce | dpo | hypo | treg | ..."),
    "eval": ("contrastkit.cli.eval", "evaluate: truthfulqa | open-ended | ..."),
}

USAGE = "usage: contrastkit <command> [options]   (contrastkit <command> --help for details)"
GLOBAL_HELP = ("every command also takes --verbose (show third-party warnings) and, where it runs a model, "
               "--threads N (torch CPU threads)")


def available(table: dict) -> dict:
    """Only the commands whose module exists in this installation."""
    return {k: v for k, v in table.items() if importlib.util.find_spec(v[0]) is not None}


def dispatch(prog: str, table: dict, argv: list[str]) -> int:
    table = available(table)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} <command> [options]\n\ncommands:")
        for name, (_, summary) in table.items():
            print(f"  {name:<12} {summary}")
        print(f"\n{GLOBAL_HELP}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: error: unknown command '{name}'.{did_you_mean(name, list(table))} "
              f"Commands: {', '.join(table)}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-V", "--version"):
        from contrastkit import __version__

        print(f"contrastkit {__version__}")
        return 0
    from contrastkit.cli.common import quiet_third_party

    quiet_third_party("--verbose" in argv)  # before any third-party import can warn
    return dispatch("contrastkit", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
