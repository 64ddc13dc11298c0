"""Fixtures for the ranker tests: a tiny random RankGen checkpoint in the published Hub format.

The Hub format of ``kalpeshk2011/rankgen-t5-*`` (reference ``modeling_rankgen.py``): a
``T5Config`` ``config.json`` (with ``auto_map`` to the remote code, which we never run) and a
``pytorch_model.bin`` whose keys are ``t5_encoder.*`` (a ``T5EncoderModel``) and
``projection.weight`` (bias-free ``d_model x d_model``). The module below mirrors the reference
class and shares no code with contrastkit.
"""

from __future__ import annotations

import json

import torch
from torch import nn


class ReferenceT5WithProjection(nn.Module):
    """Same attribute names and forward as the reference T5EncoderWithProjection."""

    def __init__(self, config):
        super().__init__()
        from transformers import T5EncoderModel

        self.t5_encoder = T5EncoderModel(config)
        self.projection = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, input_ids, attention_mask):
        h = self.t5_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(h[:, 0, :])


def make_tiny_rankgen(path, tokenizer, seed: int = 0):
    from transformers import T5Config

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    ref = ReferenceT5WithProjection(cfg).eval()
    with torch.no_grad():
        ref.projection.weight.mul_(5.0)  # scores far from 0 so a missing projection is visible
    path.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    d.update(architectures=["T5EncoderWithProjection"],
             auto_map={"AutoModel": "modeling_rankgen.T5EncoderWithProjection"})
    (path / "config.json").write_text(json.dumps(d))
    torch.save(ref.state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(str(path))
    return ref

