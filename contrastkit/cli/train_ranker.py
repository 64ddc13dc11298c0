"""``contrastkit train ranker``: train a RankGen-style ranker (arXiv 2205.09726 section 2.2).

Example::

    contrastkit train ranker --data ../shared/data/wikitext103_test/wiki.test.raw --max_steps 100 \\
        --output_dir runs/ranker
    contrastkit generate "The history of the city" --strategy rankgen --ranker runs/ranker

Re-running the same command after an interruption resumes from the newest checkpoint. The
output directory is a ranker that ``--ranker DIR`` (or ``rankgen:DIR``) loads.
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

PROG = "contrastkit train ranker"


def build_parser() -> ArgumentParser:
    from contrastkit.rankers.trainer import RankerTrainConfig

    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file whose keys are these flags (flags override it).")
    add_dataclass_arguments(parser, RankerTrainConfig)
    return parser


def main(argv: list[str]) -> int:
    def body() -> int:
        from contrastkit.rankers.trainer import RankerTrainConfig, train_ranker

        args = parse_with_config(build_parser(), argv)
        cfg = build_dataclass(RankerTrainConfig, vars(args))
        _, summary = train_ranker(cfg)
        keys = ("global_step", "resumed_from", "train_pairs", "heldout_pairs", "generative_negatives",
                "heldout_accuracy_before", "heldout_accuracy_after")
        print(json.dumps({k: summary[k] for k in keys}))
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
