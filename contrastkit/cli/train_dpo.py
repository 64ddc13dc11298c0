"""``contrastkit train dpo``: DPO (arXiv 2305.18290) on trl.

    contrastkit train dpo --config dpo_smollm2_hh
    contrastkit train dpo --config dpo_smollm2_hh --max_steps 10 --resume_from_checkpoint auto

See docs/alignment.md; the recipe itself is :mod:`contrastkit.cli.train_common`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from contrastkit.alignment.configs import ContrastDPOConfig
    from contrastkit.cli.train_common import main_for

    return main_for("dpo", ContrastDPOConfig, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
