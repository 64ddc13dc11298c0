"""The amateur of contrastive decoding: a separate model, or the expert's own weights plus a PEFT adapter.

``amateur=`` accepts:

* a model object (``PreTrainedModel``): a separate amateur (CD: a smaller model of the same family);
* a path to a PEFT adapter directory (``adapter_config.json``; what ``contrastkit train induce``
  writes): the ICD amateur as *the expert's base weights + that adapter*. The adapter is injected
  into the expert once (weights shared in memory; the LoRA matrices are the only extra memory) and
  its layers stay **disabled** except inside the amateur's own forward passes, so the expert (and
  any later plain ``generate`` on it) still computes the base model;
* a path to a model directory / ``.gguf`` / embedded name: loaded with :func:`contrastkit.load_model`
  (cached per expert, so repeated calls do not reload);
* ``None``: no amateur model (DoLa: the expert's premature layer plays the amateur).

A separate amateur must share the tokenizer: its vocabulary size (logit width) and special
token ids must equal the expert's, else a :class:`UsageError` says so.

With an adapter amateur, the expert, amateur and refocus rows can run as ONE batched forward per
step through peft's mixed-adapter batches (``adapter_names=["__base__", "amateur", ...]``), see
:meth:`Amateur.forward`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contrastkit.errors import UsageError

ADAPTER_NAME = "ck_amateur"
BASE = "__base__"


@dataclass
class Amateur:
    """A resolved amateur. ``kind``: 'none', 'model' (separate) or 'adapter' (expert + LoRA)."""

    kind: str
    model: Any = None  # the separate model ('model'), or the PeftModel wrapping the expert ('adapter')
    adapter_name: str | None = None
    lora_layers: list = field(default_factory=list)  # the adapter's LoRA layers (toggled directly)
    row_mask: list = field(default_factory=lambda: [None])  # read by the lora_A pre-hooks: (rows,) 0/1 or None

    @property
    def shares_expert(self) -> bool:
        return self.kind == "adapter"

    @property
    def mixes_rows(self) -> bool:
        """Expert and amateur rows can share one forward (plain LoRA: the row-masked ``lora_A`` path)."""
        return self.kind == "adapter" and bool(self.lora_layers)

    def forward(self, adapter_names: list[str] | None = None, **kwargs):
        """Run the amateur (or, for an adapter amateur, rows named by ``adapter_names``).

        For an adapter amateur, ``adapter_names`` gives each row's adapter (``"__base__"`` = the
        expert); None means every row is the amateur. Mixed rows run as ONE forward: a pre-hook on
        every ``lora_A`` multiplies its input by a 0/1 row mask, so expert rows get an exact zero
        LoRA delta (``base(x) + 0``) and amateur rows the plain LoRA output. This is what peft's
        ``adapter_names`` mixed batches compute, without their per-call hook registration and index
        lists (measured ~75 ms/step of overhead on SmolLM2 on CPU). Adapters this trick cannot cover
        (LoRA variants such as DoRA: :attr:`mixes_rows` is False) are not given mixed rows: the
        decoding loop runs their amateur rows as a forward of their own (peft refuses
        ``adapter_names`` batches for DoRA).
        """
        if self.kind == "model":
            return self.model(**kwargs)
        if self.kind != "adapter":
            raise RuntimeError("no amateur model")
        B = kwargs["input_ids"].shape[0]
        names = adapter_names if adapter_names is not None else [self.adapter_name] * B
        with self.enabled():
            if all(n == self.adapter_name for n in names):
                return self.model(**kwargs)
            if not self.mixes_rows:
                raise UsageError(f"adapter '{self.adapter_name}' is a LoRA variant (e.g. DoRA) that cannot run "
                                 f"mixed expert/amateur rows; use mixed_batch=false")
            mask = torch.tensor([n == self.adapter_name for n in names], device=kwargs["input_ids"].device)
            self.row_mask[0] = mask
            try:
                return self.model(**kwargs)
            finally:
                self.row_mask[0] = None

    @contextlib.contextmanager
    def enabled(self):
        """The adapter's layers switched on for the block (they are off otherwise)."""
        tuner = self.model.base_model  # the LoraModel: its active_adapter is what set_adapter changes (the
        if tuner.active_adapter != self.adapter_name:  # PeftModel's own attribute is not); several adapters
            tuner.set_adapter(self.adapter_name)  # attached to one expert take turns
        if not self.lora_layers:
            with adapters_enabled(self.model):
                yield
            return
        for layer in self.lora_layers:
            layer._disable_adapters = False  # what BaseTunerLayer.enable_adapters sets, minus its module walk
        try:
            yield
        finally:
            for layer in self.lora_layers:
                layer._disable_adapters = True


def _row_mask_hook(holder: list):
    def hook(module, args):
        mask = holder[0]
        if mask is None:
            return None
        x = args[0]
        return (x * mask.view(-1, *([1] * (x.dim() - 1))).to(x.dtype),) + tuple(args[1:])

    return hook


def fast_lora_layers(peft_model, name: str, holder: list) -> list:
    """LoRA layers of adapter ``name`` with a row-mask pre-hook on their ``lora_A``; [] if any layer is not plain LoRA."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and name in getattr(m, "lora_A", {})]
    if not layers or any(name in getattr(m, "lora_variant", {}) for m in layers):
        return []
    for m in layers:
        m.lora_A[name].register_forward_pre_hook(_row_mask_hook(holder))
    return layers


@contextlib.contextmanager
def adapters_enabled(peft_model):
    """Enable the injected adapter layers for the duration of the block (peft's own, slower, toggle)."""
    tuner = peft_model.base_model
    tuner.enable_adapter_layers()
    try:
        yield
    finally:
        tuner.disable_adapter_layers()


def _registry(expert) -> dict:
    """Per-expert cache of resolved amateurs (kept out of ``nn.Module`` bookkeeping)."""
    reg = expert.__dict__.get("_contrastkit_amateurs")
    if reg is None:
        reg = {}
        object.__setattr__(expert, "_contrastkit_amateurs", reg)
    return reg


def resolve_amateur(expert, amateur) -> Amateur:
    """Turn an ``amateur=`` parameter (see the module docstring) into an :class:`Amateur`."""
    if amateur is None:
        return Amateur("none")
    if isinstance(amateur, Amateur):
        return amateur
    if isinstance(amateur, torch.nn.Module):
        if amateur is expert:
            return Amateur("model", expert)
        check_vocab(expert, amateur)
        return Amateur("model", amateur)
    if not isinstance(amateur, (str, Path)):
        raise UsageError(f"amateur must be a model, a model path or a PEFT adapter directory, got {type(amateur).__name__}")
    key = str(Path(amateur).expanduser().resolve()) if Path(amateur).expanduser().exists() else str(amateur)
    reg = _registry(expert)
    if key not in reg:
        path = Path(amateur).expanduser()
        if (path / "adapter_config.json").exists():
            reg[key] = attach_adapter(expert, path)
        else:
            from contrastkit.models import load_model

            device = next(expert.parameters()).device
            model, _ = load_model(str(amateur), device=str(device), dtype=str(next(expert.parameters()).dtype).split(".")[-1])
            check_vocab(expert, model)
            reg[key] = Amateur("model", model)
    return reg[key]


def attach_adapter(expert, path: Path, name: str | None = None) -> Amateur:
    """Inject the adapter at ``path`` into ``expert`` (disabled) and return it as an adapter amateur."""
    from peft import PeftModel

    reg = _registry(expert)
    peft_model = reg.get("__peft__")
    name = name or f"{ADAPTER_NAME}{sum(1 for k in reg if k != '__peft__')}"
    try:
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(expert, str(path), adapter_name=name)
            reg["__peft__"] = peft_model
        else:
            peft_model.load_adapter(str(path), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"amateur adapter '{path}' does not fit the expert model: {first[:300]}") from None
    peft_model.eval()
    peft_model.base_model.set_adapter(name)
    peft_model.base_model.disable_adapter_layers()  # the expert stays the base model outside amateur calls
    holder: list = [None]
    layers = fast_lora_layers(peft_model, name, holder)
    return Amateur("adapter", peft_model, name, layers, holder)


def check_vocab(expert, amateur) -> None:
    """Raise unless the two models share a vocabulary (same logit width and special token ids)."""
    v_e = expert.get_output_embeddings().weight.shape[0]
    v_a = amateur.get_output_embeddings().weight.shape[0]
    if v_e != v_a:
        raise UsageError(
            f"amateur vocabulary ({v_a} logits) differs from the expert's ({v_e}); contrastive decoding needs "
            "models that share a tokenizer"
        )
    for attr in ("bos_token_id", "eos_token_id"):
        a, e = getattr(amateur.config, attr, None), getattr(expert.config, attr, None)
        if a is not None and e is not None and a != e:
            raise UsageError(f"amateur {attr}={a} differs from the expert's {e}: the tokenizers do not match")


# ---------------------------------------------------------------------------------------------
# Model anatomy used by early exit (lower-layer logits)
# ---------------------------------------------------------------------------------------------


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def final_norm(model):
    """The final norm applied before the LM head (Llama ``model.norm``, GPT-2 ``transformer.ln_f``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for obj in (decoder, getattr(model, "model", None), getattr(model, "transformer", None)):
        for attr in ("norm", "ln_f", "final_layer_norm"):
            mod = getattr(obj, attr, None) if obj is not None else None
            if isinstance(mod, torch.nn.Module):
                return mod
    raise UsageError(f"cannot find the final norm of {type(model).__name__}; use final_norm=false")


def decoder_layers(model):
    """The list of decoder blocks (``hidden_states[j]`` is the output of block ``j - 1``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for attr in ("layers", "h", "blocks"):
        mod = getattr(decoder, attr, None)
        if isinstance(mod, torch.nn.ModuleList):
            return mod
    raise UsageError(f"cannot find the decoder layers of {type(model).__name__}")


def parse_layer_spec(spec: str, n_layers: int | None, tied: bool) -> tuple[int, ...]:
    """Premature-layer spec -> ``hidden_states`` indices (0 = embeddings, N = final layer).

    ``"none"`` -> (); ``"middle"`` -> (N // 2,); ``"j"`` -> (j,); ``"a,b,c"`` -> a JSD-selected bucket; ``"low"`` / ``"high"`` ->
    HF's DoLa buckets: ``range(start, N // 2, 2)`` / ``range(N // 2, N, 2)`` (for N > 40:
    ``range(start, 20, 2)`` / ``range(N - 20, N, 2)``), ``start = 2`` when embeddings are tied.
    With ``n_layers=None`` only the syntax is checked.
    """
    spec = str(spec).strip().lower()
    if spec in ("", "none"):
        return ()
    if spec == "middle":
        return () if n_layers is None else (n_layers // 2,)
    if spec in ("low", "high"):
        if n_layers is None:
            return ()
        start = 2 if tied else 0
        if spec == "low":
            return tuple(range(start, n_layers // 2 if n_layers <= 40 else 20, 2))
        return tuple(range(n_layers // 2 if n_layers <= 40 else n_layers - 20, n_layers, 2))
    try:
        layers = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise UsageError(
            f"lower_layer must be an index, a comma list of indices, 'middle', 'low', 'high' or 'none', got {spec!r}"
        ) from None
    if not layers:
        raise UsageError("lower_layer is an empty list")
    if n_layers is not None:
        bad = [j for j in layers if not 0 <= j <= n_layers]
        if bad:
            raise UsageError(f"lower_layer {bad[0]} is out of range: this model has hidden_states[0..{n_layers}]")
    return layers


def model_layers(model, spec: str) -> tuple[int, ...]:
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return parse_layer_spec(spec, num_layers(model), tied)


# ---------------------------------------------------------------------------------------------
# The refocus stream's instruction
# ---------------------------------------------------------------------------------------------


def bind_tokenizer(model, tokenizer) -> None:
    """Tell the strategies which tokenizer encodes ``refocus_instruction`` for ``model``."""
    object.__setattr__(model, "_contrastkit_tokenizer", tokenizer)


def instruction_ids(model, cfg, device) -> torch.LongTensor:
    """Token ids of the refocus instruction: ``refocus_ids``, else the text through the model's tokenizer."""
    ids = cfg.refocus_ids
    if not ids:
        tok = model.__dict__.get("_contrastkit_tokenizer")
        if tok is None:
            path = getattr(model.config, "_name_or_path", "")
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError):
                raise UsageError("refocus_weight != 0 needs the instruction's token ids: pass refocus_ids, or call "
                                 "contrastive_decoding.bind_tokenizer(model, tokenizer)") from None
            bind_tokenizer(model, tok)
        ids = tok(cfg.refocus_instruction, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UsageError("refocus_instruction is empty after tokenization")
    return torch.tensor(list(ids), dtype=torch.long, device=device)
