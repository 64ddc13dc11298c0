"""``contrastkit train <recipe>``: training recipes, each in its own module with ``main(argv)``."""

from __future__ import annotations

import sys

from contrastkit.cli.main import dispatch

RECIPES = {
    "induce": ("contrastkit.cli.train_induce", "ICD-style hallucination-induced amateur (LoRA SFT on HaluEval)"),
    "dpo": ("contrastkit.cli.train_dpo", "DPO (arXiv 2305.18290) on trl"),
    "hypo": ("contrastkit.cli.train_hypo", "HyPO: DPO + online KL on policy samples (arXiv 2406.01462)"),
    "treg": ("contrastkit.cli.train_treg", "T-REG: token-level reward regularization (arXiv 2412.02685)"),
    "treg-heatmap": ("contrastkit.cli.train_treg_heatmap", "render T-REG token rewards as an HTML heatmap"),
    "export": ("contrastkit.cli.train_export", "merge a LoRA adapter into its base model (safetensors)"),
    "ranker": ("contrastkit.cli.train_ranker", "RankGen-style ranker: InfoNCE, in-book + generated negatives"),
    "coact": ("contrastkit.cli.train_coact", "CoACT few-shot class-incremental tuning of an encoder (arXiv 2405.16625)"),
}


def main(argv: list[str]) -> int:
    return dispatch("contrastkit train", RECIPES, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
