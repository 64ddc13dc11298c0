"""``contrastkit train hypo``: HyPO: DPO + online reverse-KL on policy samples (arXiv 2406.01462) on trl.

    contrastkit train hypo --config hypo_smollm2_hh
    contrastkit train hypo --config hypo_smollm2_hh --max_steps 10 --resume_from_checkpoint auto

See docs/alignment.md; the recipe itself is :mod:`contrastkit.cli.train_common`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from contrastkit.alignment.configs import HyPOConfig
    from contrastkit.cli.train_common import main_for

    return main_for("hypo", HyPOConfig, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
