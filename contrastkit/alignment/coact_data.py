"""Inputs of CoACT runs: text or image examples, batching, the two views, and no-grad embedding.

Views (arXiv 2405.16625 v2, part (i), uses SimCLR image augmentations): for text, the views differ
by dropout noise (SimCSE, arXiv 2104.08821) and optionally by [MASK]ing a fraction of the student's
tokens (ours); for images, a random horizontal flip and a random resized crop (scale 0.6-1) done
with one batched ``affine_grid`` (no torchvision needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Examples", "Collator", "mask_tokens", "augment_images", "embed_examples"]


@dataclass
class Examples:
    """Examples with integer labels: ``inputs`` is a list of texts or an (N, C, H, W) image tensor."""

    inputs: list[str] | torch.Tensor
    labels: torch.Tensor  # (N,) long

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.inputs[i], "labels": int(self.labels[i])}

    def subset(self, idx: torch.Tensor) -> "Examples":
        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        if isinstance(self.inputs, torch.Tensor):
            return Examples(self.inputs[idx], self.labels[idx])
        return Examples([self.inputs[i] for i in idx], self.labels[idx])


class Collator:
    """Batches ``Examples`` items: tokenizes texts (padding, truncation) or stacks images."""

    def __init__(self, tokenizer=None, max_length: int = 64):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict]) -> dict:
        labels = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        first = items[0]["inputs"]
        if isinstance(first, torch.Tensor):
            return {"pixel_values": torch.stack([it["inputs"] for it in items]), "labels": labels}
        enc = self.tokenizer([it["inputs"] for it in items], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, prob: float, mask_token_id: int,
                special_ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace a ``prob`` fraction of ordinary tokens by ``mask_token_id`` (new tensor; input unchanged).

    Args:
        input_ids, attention_mask: (B, T).
        special_ids: (S,) ids never masked (CLS, SEP, PAD).
    """
    if prob <= 0:
        return input_ids
    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special_ids.to(input_ids.device))
    return input_ids.masked_fill(maskable & (u < prob), mask_token_id)


def augment_images(x: torch.Tensor, generator: torch.Generator | None = None, *, min_scale: float = 0.6) -> torch.Tensor:
    """Random horizontal flip + random resized crop, batched through one affine grid.

    Args:
        x: (B, C, H, W) images.
    """
    B = x.shape[0]
    r = torch.rand(B, 4, generator=generator).to(x.device)  # flip, scale, shift x, shift y
    scale = min_scale + (1 - min_scale) * r[:, 1]  # (B,) side fraction kept
    flip = torch.where(r[:, 0] < 0.5, -1.0, 1.0)
    tx = (2 * r[:, 2] - 1) * (1 - scale)
    ty = (2 * r[:, 3] - 1) * (1 - scale)
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)  # (B, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = scale
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="reflection")


@torch.no_grad()
def embed_examples(model, examples: Examples, collator: Collator, batch_size: int, encoder=None) -> torch.Tensor:
    """(N, D) embeddings of ``examples`` in eval mode (no dropout, no augmentation), in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collator([examples[i] for i in range(start, min(start + batch_size, len(examples)))])
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out.append(model.embed(batch, encoder=encoder).float())
    model.train(was_training)
    if not out:
        return torch.zeros(0, model.classifier.in_features)
    return torch.cat(out)
