"""``contrastkit train treg``: T-REG: DPO + token-level reward regularization (arXiv 2412.02685) on trl.

    contrastkit train treg --config treg_smollm2_hh
    contrastkit train treg --config treg_smollm2_hh --max_steps 10 --resume_from_checkpoint auto

See docs/alignment.md; the recipe itself is :mod:`contrastkit.cli.train_common`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from contrastkit.alignment.configs import TREGConfig
    from contrastkit.cli.train_common import main_for

    return main_for("treg", TREGConfig, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
