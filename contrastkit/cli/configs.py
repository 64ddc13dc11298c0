"""``contrastkit configs``: list the YAML configs shipped in the package, or print one.

Any command's ``--config`` takes a shipped name (``--config dpo_smollm2_hh``) as well as a path.
To change a shipped config, print it into a file, edit it, and pass the file::

    contrastkit configs                       # name, command, summary of each
    contrastkit configs dpo_smollm2_hh > my.yaml
    contrastkit train dpo --config my.yaml
"""

from __future__ import annotations

import sys

from contrastkit.cli.common import ArgumentParser, resolve_config, run_command, shipped_configs

PROG = "contrastkit configs"


def describe(path) -> tuple[str, str]:
    """``(command, summary)`` from a shipped config's two leading comment lines."""
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")][:2]
    command = lines[0] if lines else ""
    summary = lines[1] if len(lines) > 1 else ""
    return command, summary


def run(argv: list[str]) -> int:
    parser = ArgumentParser(prog=PROG, description="List the shipped YAML configs, or print one.", run_flags=False)
    parser.add_argument("name", nargs="?", help="Print this shipped config (a name from the list).")
    parser.add_argument("--path", action="store_true", help="Print the config's file path instead of its text.")
    args = parser.parse_args(argv)
    if args.name:
        path = resolve_config(args.name)
        print(path if args.path else path.read_text(), end="\n" if args.path else "")
        return 0
    for name, path in shipped_configs().items():
        command, summary = describe(path)
        print(f"{name:<26} {command}")
        if summary:
            print(f"{'':<26} {summary}")
    print("\nuse: --config NAME (or a path); print one to edit: contrastkit configs NAME > my.yaml")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_command(PROG, lambda: run(argv))
