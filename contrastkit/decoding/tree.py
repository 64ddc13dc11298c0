"""Tree attention helpers: score k candidate tokens in one forward over a shared prefix cache.

A "tree" step appends the B·k candidate tokens of a decoding step to a cache that holds the
prefix once. Every candidate sits at the same position (its row's next position), attends to
its row's non-pad prefix and to itself, and not to its sibling candidates. After the forward
the cache is ``P + k`` long; :func:`keep_winner_kv` moves each row's winning candidate into slot
``P`` in place and drops the rest, so the cache again holds one copy of the prefix plus the
winner, exactly what an ordinary one-token step would have left (../shared/research/ecosystem.md
section 1c: eager and sdpa give bit-identical logits with an *additive float* mask; a bool
mask is silently wrong under eager, because eager adds the mask to the scores).

:func:`tree_supported` says whether a model and its cache can take this path. Anything else
(flash attention, sliding-window / static / quantized cache layers, heads that post-process
logits) goes through the replicated-cache fallback in :mod:`contrastkit.decoding.contrastive_search`.
"""

from __future__ import annotations

import contextlib
import os
import weakref

import torch
from transformers.cache_utils import DynamicLayer

TREE_ATTENTION = ("eager", "sdpa")  # backends that take an arbitrary additive 4-D mask
_HEAD_IS_LINEAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def additive_pad_row(attention_mask: torch.Tensor | None, batch: int, length: int, dtype, device) -> torch.Tensor:
    """(B, P) additive row: 0 where a prefix position is attended, ``finfo(dtype).min`` at pads."""
    if attention_mask is None:
        return torch.zeros(batch, length, dtype=dtype, device=device)
    row = torch.zeros(attention_mask.shape, dtype=dtype, device=device)
    return row.masked_fill(attention_mask.to(device) == 0, torch.finfo(dtype).min)


def tree_mask(pad_row: torch.Tensor, k: int) -> torch.Tensor:
    """Additive 4-D mask (B, 1, k, P + k): candidate i sees the non-pad prefix and itself only.

    Args:
        pad_row: (B, P) from :func:`additive_pad_row` (0 = attend, finfo.min = pad).
        k: candidates per row.
    """
    B, P = pad_row.shape  # batch size, cached prefix length
    lowest = torch.finfo(pad_row.dtype).min
    own = torch.full((k, k), lowest, dtype=pad_row.dtype, device=pad_row.device).fill_diagonal_(0)  # (k, k)
    prefix = pad_row[:, None, None, :].expand(B, 1, k, P)
    return torch.cat([prefix, own.expand(B, 1, k, k)], dim=-1)  # (B, 1, k, P + k)


def keep_winner_kv(cache, prefix_len: int, winner: torch.LongTensor) -> None:
    """After a tree forward, keep only each row's winning candidate in every cache layer (in place).

    Args:
        cache: a ``DynamicCache`` whose layers are plain ``DynamicLayer`` (keys/values (B, heads, P + k, hd)).
        prefix_len: P, the cache length before the tree forward.
        winner: (B,) index in [0, k) of the kept candidate.

    The winner's slot ``P + winner[b]`` is copied into slot ``P`` and the layer becomes the view
    ``[:, :, :P + 1]``; the next ``DynamicLayer.update`` concatenates onto it, which frees the
    k-candidate tensor. No copy of the prefix is made here.
    """
    rows = torch.arange(winner.shape[0], device=winner.device)
    src = prefix_len + winner  # (B,)
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name)  # (B, heads, P + k, hd)
            t[:, :, prefix_len] = t[rows, :, src.to(t.device)]  # (B, heads, hd)
            setattr(layer, name, t[:, :, : prefix_len + 1])


@contextlib.contextmanager
def sdpa_gqa():
    """Let transformers' sdpa path pass ``enable_gqa=True`` even though a mask is given.

    With a mask and more than one query token, ``transformers.integrations.sdpa_attention``
    otherwise materialises ``repeat_kv`` copies of the whole K/V cache in every layer at every
    step (n_rep x the cache; measured on SmolLM2, 9 query / 3 KV heads, B=4, P=1500: tree step
    0.84-1.0 s -> 0.42-0.44 s under load). torch's sdpa handles GQA with a mask natively. The
    switch is transformers' own ``TRANSFORMERS_SDPA_FORCE_GQA``; it is set only around the tree
    forward and restored afterwards.
    """
    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def head_is_linear(model, body) -> bool:
    """True when ``model(x).logits == output_embeddings(body(x).last_hidden_state)`` (checked once per model).

    Tree mode runs the transformer body and applies the LM head to the winners only, which is
    exact only for models whose logits are the plain head of the last hidden state (Llama, GPT-2,
    Mistral, Qwen...). Models that soft-cap or rescale logits fail the check and use the fallback.
    """
    if model in _HEAD_IS_LINEAR:
        return _HEAD_IS_LINEAR[model]
    head = model.get_output_embeddings()
    ok = head is not None
    if ok:
        device = next(model.parameters()).device
        probe = torch.tensor([[1]], device=device) % model.config.get_text_config().vocab_size
        with torch.no_grad():
            full = model(input_ids=probe, use_cache=False).logits.float()
            mine = head(body(input_ids=probe, use_cache=False).last_hidden_state).float()
        ok = full.shape == mine.shape and torch.allclose(full, mine, rtol=1e-4, atol=1e-4 * float(full.abs().max()))
    _HEAD_IS_LINEAR[model] = ok
    return ok


def tree_supported(model, cache) -> str | None:
    """``None`` if the tree path applies to ``model`` with this (prefilled) cache, else the reason why not.

    ``cache=None`` checks the model alone (a forward that starts without a cached prefix).
    """
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in TREE_ATTENTION:
        return f"attention backend {attn!r} cannot take a custom 4-D mask (tree mode needs one of {TREE_ATTENTION})"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported by tree mode"
    if cache is None:  # no prefix yet: only the model matters
        return None
    bad = sorted({type(layer).__name__ for layer in getattr(cache, "layers", [None]) if type(layer) is not DynamicLayer})
    if bad:
        return f"cache layers {bad} are not plain DynamicLayer (sliding-window / static / quantized caches)"
    return None
