"""``contrastkit train induce``: ICD-style hallucination-induced amateur (LoRA SFT on HaluEval QA).

Example::

    contrastkit train induce --model smollm2 --num_examples 300 --output_dir runs/amateur
    # --data defaults to the Hub id pminervini/HaluEval; offline, pass a local copy:
    contrastkit train induce --data PATH/qa_data_first1000.json --num_examples 300 --output_dir runs/amateur
    contrastkit generate "Who wrote Hamlet?" --strategy icd --amateur runs/amateur

Re-running the same command after an interruption resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import sys

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    build_dataclass,
    parse_with_config,
    run_command,
)

PROG = "contrastkit train induce"


def build_parser() -> ArgumentParser:
    from contrastkit.alignment.induce import InduceConfig

    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file whose keys are these flags (flags override it).")
    add_dataclass_arguments(parser, InduceConfig)
    return parser


def main(argv: list[str]) -> int:
    def body() -> int:
        from contrastkit.alignment.induce import InduceConfig, induce

        args = parse_with_config(build_parser(), argv)
        cfg = build_dataclass(InduceConfig, vars(args))
        summary = induce(cfg)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
