"""Tiny random models and a locally trained tokenizer for fast, offline tests and examples.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in memory on a
synthetic corpus (so decode and stop strings behave like a real tokenizer), and the models are
randomly initialised Llama / GPT-2 configs with a few layers and d=64
(../shared/research/ecosystem.md, "Test fixture used throughout").
"""

from __future__ import annotations

import functools
from pathlib import Path

CORPUS_WORDS = (
    "the a an of to in and is was for on with as by at from that this it he she they we you "
    "cat dog bird fish tree river city house road car ship king queen war peace time year day night "
    "red green blue small large old new first last good bad true false answer question yes no "
    "once upon there lived went saw said made found came took gave told asked became seemed"
).split()


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with bos/eos/pad, left padding and a chat template."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(2000)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    return fast


def tiny_llama(seed: int = 0, *, vocab_size: int | None = None, num_layers: int = 2, init_range: float = 0.02,
               attn_implementation: str = "sdpa", max_position_embeddings: int = 512):
    """A randomly initialised 2-layer, d=64 Llama on CPU in fp32 (eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=128, vocab_size=vocab_size or len(tok), max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=init_range, tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def tiny_gpt2(seed: int = 0, *, num_layers: int = 2, init_range: float = 0.02, attn_implementation: str = "sdpa"):
    """A randomly initialised 2-layer, d=64 GPT-2 on CPU in fp32 (eval mode)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    cfg = GPT2Config(
        n_embd=64, n_layer=num_layers, n_head=2, n_positions=512, vocab_size=len(tok),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=init_range,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_tiny(path: str | Path, model=None, tokenizer=None) -> Path:
    """Save a tiny model + tokenizer as a local HF directory (what ``load_model(path)`` reads)."""
    path = Path(path)
    model = model if model is not None else tiny_llama()
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
