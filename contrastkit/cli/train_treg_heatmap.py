"""``contrastkit train treg-heatmap``: render T-REG token rewards of a few pairs as an HTML heatmap.

    contrastkit train treg-heatmap --config treg_heatmap_smollm2_hh
    contrastkit train treg-heatmap --train_file pairs.jsonl --num_examples 3 --output rewards.html

The rewards are the ones T-REG trains with (arXiv 2412.02685, Sec. 3.1): the frozen model scores
each response token under the "better" and the "worse" prompt (``--treg_better_template`` /
``--treg_worse_template``), ``rhat_t = sigma(log p_better - log p_worse) - 0.5``. Green tokens got
credit, red ones blame.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    atomic_write,
    build_dataclass,
    parse_with_config,
    run_command,
)

PROG = "contrastkit train treg-heatmap"


@dataclass
class HeatmapConfig:
    """What to render and where."""

    num_examples: int = field(default=3, metadata={"help": "Number of pairs to render (>= 1)."})
    output: str = field(default="treg_heatmap.html", metadata={"help": "HTML file to write."})
    max_length: int | None = field(default=1024, metadata={"help": "Score at most this many prompt+response tokens."})
    treg_reward_batch_size: int = field(default=4, metadata={"help": "Sequences per reference forward."})

    def __post_init__(self):
        from contrastkit.errors import check_range

        check_range("num_examples", self.num_examples, 1)
        check_range("max_length", self.max_length, 2)


def _body(argv: list[str]) -> int:
    from contrastkit.alignment.configs import DEFAULT_BETTER_TEMPLATE, DEFAULT_WORSE_TEMPLATE
    from contrastkit.alignment.token_rewards import compute_token_rewards, render_heatmap, tokenize_pairs
    from contrastkit.cli.train_common import TrainScriptConfig, load_data, load_tokenizer
    from contrastkit.errors import UsageError

    parser = ArgumentParser(prog=PROG, description="Render T-REG token rewards as an HTML heatmap.")
    parser.add_argument("--config", default=None, help="YAML file of option values; flags override it")
    parser.add_argument("--treg_better_template", default=None, help="'better' prompt with {prompt}")
    parser.add_argument("--treg_worse_template", default=None, help="'worse' prompt with {prompt}")
    add_dataclass_arguments(parser, HeatmapConfig)
    add_dataclass_arguments(parser, TrainScriptConfig, group_title="model and data")
    args = vars(parse_with_config(parser, argv))
    cfg = build_dataclass(HeatmapConfig, args)
    script = build_dataclass(TrainScriptConfig, {**args, "limit": args.get("limit") or cfg.num_examples})
    better = args.get("treg_better_template") or DEFAULT_BETTER_TEMPLATE
    worse = args.get("treg_worse_template") or DEFAULT_WORSE_TEMPLATE
    for name, t in (("treg_better_template", better), ("treg_worse_template", worse)):
        if "{prompt}" not in t:
            raise UsageError(f"{name} must contain the placeholder {{prompt}}, got {t!r}")
    train, _ = load_data(script)
    tok = load_tokenizer(script.model)
    rows = tokenize_pairs(train.select(range(min(cfg.num_examples, len(train)))), tok)
    from contrastkit.models import load_model

    model, tok = load_model(script.model, adapter=script.adapter, dtype=script.dtype)
    rewards = compute_token_rewards(model, tok, rows, better, worse, max_length=cfg.max_length,
                                    batch_size=cfg.treg_reward_batch_size)
    for row, c, r in zip(rows, rewards["chosen_token_rewards"], rewards["rejected_token_rewards"]):
        row["chosen_token_rewards"], row["rejected_token_rewards"] = c, r
    with atomic_write(cfg.output) as f:
        f.write(render_heatmap(rows, tok))
    print(f"wrote token rewards of {len(rows)} pairs to {cfg.output}")
    return 0


def main(argv: list[str]) -> int:
    return run_command(PROG, lambda: _body(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
