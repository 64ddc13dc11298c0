"""Tree-attention helpers on hand-built tensors: the additive masks, the winner's KV slot, the support check."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from contrastkit.decoding.tree import additive_pad_row, keep_winner_kv, sdpa_gqa, tree_mask, tree_supported

LOW = torch.finfo(torch.float32).min


def test_additive_pad_row_masks_only_pads():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    row = additive_pad_row(mask, 2, 3, torch.float32, "cpu")
    assert row.tolist() == [[LOW, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert additive_pad_row(None, 2, 4, torch.float16, "cpu").tolist() == [[0.0] * 4] * 2


def test_tree_mask_candidate_sees_prefix_and_itself_only():
    pad_row = additive_pad_row(torch.tensor([[0, 1], [1, 1]]), 2, 2, torch.float32, "cpu")
    m = tree_mask(pad_row, 3)
    assert m.shape == (2, 1, 3, 5) and m.dtype == torch.float32
    for b in range(2):
        for i in range(3):
            assert m[b, 0, i, :2].tolist() == pad_row[b].tolist()  # the non-pad prefix, same for every candidate
            assert m[b, 0, i, 2:].tolist() == [0.0 if j == i else LOW for j in range(3)]  # itself, not siblings


def _layer(B, heads, length, hd, offset):
    t = torch.arange(B * heads * length * hd, dtype=torch.float32).reshape(B, heads, length, hd) + offset
    return SimpleNamespace(keys=t.clone(), values=-t.clone())


def test_keep_winner_kv_moves_each_rows_winner_into_slot_p():
    B, heads, P, k, hd = 3, 2, 4, 3, 2
    cache = SimpleNamespace(layers=[_layer(B, heads, P + k, hd, 0.0), _layer(B, heads, P + k, hd, 1000.0)])
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    winner = torch.tensor([2, 0, 1])
    keep_winner_kv(cache, P, winner)
    for layer, (k0, v0) in zip(cache.layers, before):
        for name, orig in (("keys", k0), ("values", v0)):
            t = getattr(layer, name)
            assert t.shape == (B, heads, P + 1, hd)
            assert torch.equal(t[:, :, :P], orig[:, :, :P])  # the prefix is untouched
            for b in range(B):
                assert torch.equal(t[b, :, P], orig[b, :, P + int(winner[b])])


def _model(attn="sdpa", enc_dec=False):
    return SimpleNamespace(config=SimpleNamespace(_attn_implementation=attn, is_encoder_decoder=enc_dec))


def test_tree_supported_only_for_plain_dynamic_layers_and_mask_backends():
    assert tree_supported(_model(), None) is None
    assert tree_supported(_model("eager"), SimpleNamespace(layers=[DynamicLayer(), DynamicLayer()])) is None
    assert "attention backend" in tree_supported(_model("flash_attention_2"), None)
    assert "encoder-decoder" in tree_supported(_model(enc_dec=True), None)
    why = tree_supported(_model(), SimpleNamespace(layers=[DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)]))
    assert why is not None and "DynamicSlidingWindowLayer" in why


@pytest.mark.parametrize("before", [None, "0"])
def test_sdpa_gqa_sets_and_restores_the_switch(monkeypatch, before):
    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    if before is None:
        monkeypatch.delenv(key, raising=False)
    else:
        monkeypatch.setenv(key, before)
    with sdpa_gqa():
        assert os.environ[key] == "1"
    assert os.environ.get(key) == before
    with pytest.raises(RuntimeError):
        with sdpa_gqa():
            raise RuntimeError("forward failed")
    assert os.environ.get(key) == before
