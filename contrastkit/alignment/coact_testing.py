"""Tiny random encoders and synthetic class-incremental data for CoACT tests and examples (offline).

* :func:`tiny_bert`: a 2-block, d=32 BERT with a word-level tokenizer over
  :data:`contrastkit.testing.CORPUS_WORDS` (with [CLS]/[SEP]/[PAD]/[MASK]).
* :func:`tiny_vit`: a 2-block, d=32 ViT on 16x16 images.
* :func:`synthetic_text` / :func:`synthetic_images`: classes that differ by their words / colours.
"""

from __future__ import annotations

import functools

__all__ = ["tiny_word_tokenizer", "tiny_bert", "tiny_vit", "synthetic_text", "synthetic_images"]


@functools.lru_cache(maxsize=None)
def tiny_word_tokenizer():
    """A BERT-style word-level ``PreTrainedTokenizerFast`` (right padding, [CLS] x [SEP])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from contrastkit.testing import CORPUS_WORDS

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(CORPUS_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", padding_side="right")


def tiny_bert(seed: int = 0, *, num_layers: int = 2, hidden: int = 32):
    """A randomly initialised BERT encoder (``BertModel``, no pooler) in eval mode."""
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=len(tiny_word_tokenizer()), hidden_size=hidden, num_hidden_layers=num_layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    return BertModel(cfg, add_pooling_layer=False).eval()


def tiny_vit(seed: int = 0, *, num_layers: int = 2, hidden: int = 32):
    """A randomly initialised ViT (``ViTModel``) on 3x16x16 images with 4x4 patches, in eval mode."""
    import torch
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=hidden, num_hidden_layers=num_layers,
                    num_attention_heads=2, intermediate_size=2 * hidden)
    torch.manual_seed(seed)
    return ViTModel(cfg, add_pooling_layer=False).eval()


def synthetic_text(num_classes: int, per_class: int, seed: int = 0, *, length: int = 6) -> tuple[list[str], list[str]]:
    """Texts of 2 to ``length`` words whose class is given by two class-specific words among random fillers."""
    import random

    from contrastkit.testing import CORPUS_WORDS

    words = sorted(set(CORPUS_WORDS))
    rng = random.Random(seed)
    texts, labels = [], []
    for c in range(num_classes):
        key = [words[(2 * c) % len(words)], words[(2 * c + 1) % len(words)]]
        for _ in range(per_class):  # 2 to `length` words, so batches need padding
            body = [rng.choice(words) for _ in range(rng.randint(0, length - 2))] + key
            rng.shuffle(body)
            texts.append(" ".join(body))
            labels.append(f"class_{c:02d}")
    return texts, labels


def synthetic_images(num_classes: int, per_class: int, seed: int = 0):
    """(N, 3, 16, 16) images: a class-specific colour plus noise; labels as strings."""
    import torch

    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(1234))
    x = colours.repeat_interleave(per_class, 0) + 0.1 * torch.randn(num_classes * per_class, 3, 16, 16, generator=g)
    labels = [f"class_{c:02d}" for c in range(num_classes) for _ in range(per_class)]
    return x, labels
