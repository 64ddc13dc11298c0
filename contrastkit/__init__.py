"""contrastkit: contrastive decoding and preference-alignment methods for Hugging Face models.

Top-level API (imported lazily so that ``import contrastkit`` stays cheap)::

    model, tok = contrastkit.load_model("smollm2")
    contrastkit.generate(model, tok, ["Once upon a time"], strategy="greedy", max_new_tokens=32)
    contrastkit.score(model, tok, "Q: ...\\nA:", [" yes", " no"])
    contrastkit.strategy("greedy").custom_generate   # for model.generate(custom_generate=...)
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "contrastkit.models:load_model",
    "load_encoder": "contrastkit.models:load_encoder",
    "ModelConfig": "contrastkit.models:ModelConfig",
    "generate": "contrastkit.generation:generate",
    "GenerationResult": "contrastkit.generation:GenerationResult",
    "score": "contrastkit.decoding.scoring:score",
    "strategy": "contrastkit.decoding.base:get_strategy",
    "UsageError": "contrastkit.errors:UsageError",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'contrastkit' has no attribute {name!r}")
