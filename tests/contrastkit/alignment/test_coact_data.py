"""CoACT views and batching: token masking, image augmentation, collator, embedding order."""

from __future__ import annotations

import torch

from contrastkit.alignment.coact_data import Collator, Examples, augment_images, mask_tokens
from contrastkit.alignment.coact_testing import tiny_word_tokenizer


def test_mask_tokens_never_touches_special_or_padding():
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 3], [2, 20, 21, 3, 0, 0, 0, 0]])
    att = (ids != 0).long()
    special = torch.tensor([0, 2, 3])
    g = torch.Generator().manual_seed(0)
    out = mask_tokens(ids, att, prob=0.999, mask_token_id=4, special_ids=special, generator=g)
    assert out[:, 0].eq(2).all() and out[0, 7] == 3 and out[1, 3] == 3 and out[1, 4:].eq(0).all()
    assert out[0, 1:7].eq(4).all() and out[1, 1:3].eq(4).all()
    assert ids[0, 1] == 10  # input untouched
    assert torch.equal(mask_tokens(ids, att, prob=0.0, mask_token_id=4, special_ids=special), ids)
    half = mask_tokens(ids.repeat(200, 1), att.repeat(200, 1), prob=0.3, mask_token_id=4, special_ids=special,
                       generator=g)
    rate = half.eq(4).sum().item() / (8 * 200)  # 8 maskable tokens per pair of rows
    assert 0.25 < rate < 0.35


def test_augment_images_full_scale_is_identity_or_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    out = augment_images(x, torch.Generator().manual_seed(1), min_scale=1.0)
    assert out.shape == x.shape
    for i in range(16):
        same = torch.allclose(out[i], x[i], atol=1e-5)
        flipped = torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
        assert same != flipped  # exactly one of the two
    flips = sum(torch.allclose(out[i], x[i].flip(-1), atol=1e-5) for i in range(16))
    assert 0 < flips < 16
    crop = augment_images(x, torch.Generator().manual_seed(1), min_scale=0.5)
    assert not torch.allclose(crop, out)


def test_collator_and_examples_subset_keep_labels_aligned():
    tok = tiny_word_tokenizer()
    ex = Examples(["the cat", "a dog saw the king", "red"], torch.tensor([2, 0, 1]))
    sub = ex.subset(torch.tensor([2, 0]))
    assert sub.inputs == ["red", "the cat"] and sub.labels.tolist() == [1, 2]
    batch = Collator(tok, 4)([sub[i] for i in range(len(sub))] + [ex[1]])
    assert batch["labels"].tolist() == [1, 2, 0]
    assert batch["input_ids"].shape == (3, 4)  # truncated to max_length
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0]  # [CLS] red [SEP] [PAD]
    imgs = Examples(torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 1]))
    b = Collator()([imgs[i] for i in (2, 0)])
    assert torch.equal(b["pixel_values"], imgs.inputs[[2, 0]]) and b["labels"].tolist() == [1, 0]
