"""Run CoACT, its ablations and the baselines through the session protocol, with per-session checkpoints.

Methods (registry ``COACT_METHODS``, keyed by CLI name):

* ``coact``: all three parts (i)-(iii) of arXiv 2405.16625 v2;
* ``coact-no-contrastive`` / ``coact-no-controlled-ft`` / ``coact-no-consistency``: one part off;
* ``prototype``: the frozen encoder with class-mean prototypes (nearest class mean by dot product,
  the standard FSCIL baseline; no training);
* ``finetune``: naive LoRA fine-tuning with cross-entropy in every session (LoRA + classifier, same
  learning rate in every session, none of CoACT's parts).

Each session seeds torch with ``seed * 1000 + session``, so a run resumed from the checkpoint of its
last finished session reproduces the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from contrastkit.alignment.coact_config import CoACTConfig, ProtocolConfig
from contrastkit.alignment.coact_data import Collator, Examples, embed_examples
from contrastkit.alignment.coact_model import CoACTModel, student_to_teacher_name
from contrastkit.alignment.coact_protocol import Sessions, make_sessions, session_metrics
from contrastkit.io import atomic_write
from contrastkit.registry import Registry

__all__ = ["MethodSpec", "COACT_METHODS", "run_method", "mutable_state"]


@dataclass(frozen=True)
class MethodSpec:
    """How a method differs from CoACT: config overrides, whether it trains, in which sessions."""

    overrides: dict = field(default_factory=dict)
    train: bool = True
    lora: bool = True


COACT_METHODS: Registry = Registry("CoACT method")
COACT_METHODS.register("coact", MethodSpec())
COACT_METHODS.register("coact-no-contrastive", MethodSpec({"contrastive": False}))
COACT_METHODS.register("coact-no-controlled-ft", MethodSpec({"controlled_ft": False}))
COACT_METHODS.register("coact-no-consistency", MethodSpec({"consistency": False}))
COACT_METHODS.register("prototype", MethodSpec({"contrastive": False, "controlled_ft": False, "consistency": False},
                                               train=False, lora=False))
COACT_METHODS.register("finetune", MethodSpec({"contrastive": False, "controlled_ft": False, "consistency": False,
                                               "incft_layers": "classifier+pet", "inc_lr_factor": 1.0}))


def mutable_state(model: CoACTModel) -> dict[str, torch.Tensor]:
    """The tensors that can differ from the pre-trained encoder: LoRA, classifier, ``seen``, and the
    weights controlled fine-tuning may unfreeze (student and teacher). A checkpoint stores only these."""
    ft = {id(p) for p in model.ft_parameters()}
    keys = {"student." + n for n, p in model.student.named_parameters() if id(p) in ft}
    keys |= {"teacher." + student_to_teacher_name(k[len("student."):]) for k in keys}
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" in k or k.startswith("classifier.") or k == "seen" or k in keys}


def _train_args(p: ProtocolConfig, *, epochs: int, lr: float, seed: int, out: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out, per_device_train_batch_size=p.batch_size, num_train_epochs=epochs, learning_rate=lr,
        weight_decay=p.weight_decay, lr_scheduler_type="cosine", warmup_steps=0, save_strategy="no",
        report_to=[], logging_strategy="no", disable_tqdm=True, remove_unused_columns=False, seed=seed,
        data_seed=seed, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)


def _train_session(model: CoACTModel, data: Examples, cfg: CoACTConfig, p: ProtocolConfig, session: int,
                   base_copy, collator: Collator, seed: int) -> None:
    from transformers import PrinterCallback

    from contrastkit.alignment.coact_trainer import (
        CoACTTrainer,
        ControlledFinetuneCallback,
        EMATeacherCallback,
    )

    epochs = p.base_epochs if session == 0 else p.inc_epochs
    if epochs == 0:
        return
    if session == 0:
        model.set_trainable(lora=True, classifier=True, ft=False)  # ft blocks unfreeze by callback
        lr = p.learning_rate
    else:
        model.set_trainable(lora="pet" in cfg.incft_layers, classifier="classifier" in cfg.incft_layers, ft=False)
        lr = p.learning_rate * cfg.inc_lr_factor
    callbacks = [EMATeacherCallback()] if model.teacher is not None else []
    if session == 0 and model.ft_start is not None:
        callbacks.append(ControlledFinetuneCallback(cfg.ft_start_epoch))
    tok = collator.tokenizer
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long) if tok is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = CoACTTrainer(
            model=model, args=_train_args(p, epochs=epochs, lr=lr, seed=seed, out=tmp), train_dataset=data,
            data_collator=collator, callbacks=callbacks, coact=cfg, base_model=base_copy,
            mask_token_id=getattr(tok, "mask_token_id", None), special_ids=special, view_seed=seed)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    model.requires_grad_(False)
    model.eval()


def _evaluate(model: CoACTModel, test: Examples, split: Sessions, session: int, collator, bs: int) -> dict:
    keep = split.test_labels < split.seen_classes(session)
    sub = Examples([test.inputs[i] for i in split.test_idx[keep].tolist()] if not isinstance(test.inputs, torch.Tensor)
                   else test.inputs[split.test_idx[keep]], split.test_labels[keep])
    emb = embed_examples(model, sub, collator, bs)
    with torch.no_grad():
        preds = model.predict_logits(emb.to(model.classifier.weight.device)).argmax(-1).cpu()
    return session_metrics(preds, sub.labels, split.base_classes)


def _fingerprint(method: str, seed: int, p: ProtocolConfig, cfg: CoACTConfig, model_name: str, data: str,
                 weights: str) -> str:
    """What a session's checkpoint depends on: method, seed, settings, and the *contents* of the data and of
    the encoder's weights (not their names or paths), so edited files behind the same paths are refused."""
    return json.dumps({"method": method, "seed": seed, "protocol": dataclasses.asdict(p),
                       "coact": dataclasses.asdict(cfg), "model": model_name, "data_sha256": data,
                       "weights_sha256": weights}, sort_keys=True)


def _digest_data(*parts) -> str:
    """sha256 over texts / labels (JSON) or image tensors (raw bytes), in order."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(list(part), ensure_ascii=False, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def _digest_weights(module: torch.nn.Module) -> str:
    """sha256 of the encoder's pretrained weights, before any LoRA or training.

    Loaded from a local folder: the bytes of its config and weight files (a head missing from the
    checkpoint, such as BERT's pooler, is re-initialised at random on every load and never used, so
    the in-memory state would differ from run to run). Otherwise: every state tensor's name and bytes.
    """
    import hashlib

    h = hashlib.sha256()
    folder = Path(str(getattr(getattr(module, "config", None), "_name_or_path", "") or ""))
    files = sorted(f for pat in ("config.json", "*.safetensors", "*.bin") for f in folder.glob(pat)) \
        if folder.is_dir() else []
    if files:
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_method(method: str, *, encoder_fn: Callable[[], torch.nn.Module], tokenizer, train_inputs, train_labels: list[str],
               test_inputs, test_labels: list[str], protocol: ProtocolConfig, coact: CoACTConfig, seed: int,
               out_dir: str | Path | None = None, resume: bool = True, model_name: str = "",
               stop_after: int | None = None, on_session: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run one method for one seed over all sessions; returns one metrics dict per session.

    With ``out_dir``, a checkpoint (``checkpoint.pt``) and ``session<s>.json`` are written after each
    session; with ``resume`` a run continues after the last finished session. ``stop_after`` ends
    the run after that session (tests use it to simulate a crash).
    """
    spec = COACT_METHODS.get(method)
    cfg = dataclasses.replace(coact, **spec.overrides)
    split = make_sessions(train_labels, test_labels, protocol, seed)
    torch.manual_seed(seed)
    encoder = encoder_fn()
    weights_sha256 = _digest_weights(encoder)
    model = CoACTModel(encoder, protocol.total_classes, cfg, lora=spec.lora, teacher=spec.train and cfg.contrastive)
    collator = Collator(tokenizer, protocol.max_length)
    train = Examples(train_inputs, torch.zeros(len(train_labels), dtype=torch.long))
    test = Examples(test_inputs, torch.zeros(len(test_labels), dtype=torch.long))
    needs_base = spec.train and protocol.inc_epochs > 0 and (cfg.consistency or cfg.contrastive)
    out = Path(out_dir) if out_dir is not None else None
    fingerprint = _fingerprint(method, seed, protocol, cfg, model_name,
                               _digest_data(train_inputs, train_labels, test_inputs, test_labels), weights_sha256)
    results, base_copy, start = _resume(model, out, fingerprint, needs_base) if (out and resume) else ([], None, 0)
    for s in range(start, protocol.sessions + 1):
        t0 = time.perf_counter()
        torch.manual_seed(seed * 1000 + s)
        data = train.subset(split.train_idx[s])
        data.labels = split.train_labels[s]
        model.set_prototypes(embed_examples(model, data, collator, protocol.eval_batch_size), data.labels)
        if spec.train and (s == 0 or protocol.inc_epochs > 0):
            _train_session(model, data, cfg, protocol, s, base_copy, collator, seed * 1000 + s)
        if s == 0 and needs_base:
            base_copy = model.frozen_copy()
        metrics = {"session": s, "seen_classes": split.seen_classes(s),
                   **_evaluate(model, test, split, s, collator, protocol.eval_batch_size),
                   "wall_s": round(time.perf_counter() - t0, 2)}
        results.append(metrics)
        if on_session is not None:
            on_session(s, metrics)
        if out is not None:
            _checkpoint(out, s, model, base_copy, results, fingerprint)
        if stop_after is not None and s >= stop_after:
            break
    return results


def _checkpoint(out: Path, session: int, model, base_copy, results: list[dict], fingerprint: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {"session": session, "fingerprint": fingerprint, "results": results, "model": mutable_state(model),
             "base": mutable_state(base_copy) if base_copy is not None else None}
    with atomic_write(out / "checkpoint.pt", "wb") as f:
        torch.save(state, f)
    with atomic_write(out / f"session{session}.json") as f:
        json.dump(results[-1], f, indent=1)


def _resume(model, out: Path, fingerprint: str, needs_base: bool):
    from contrastkit.errors import UsageError

    path = out / "checkpoint.pt"
    if not path.exists():
        return [], None, 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["fingerprint"] != fingerprint:
        raise UsageError(f"checkpoint {path} was written with other settings; use a new output_dir or resume false")
    base_copy = None
    if needs_base and state["base"] is not None:
        base_copy = model.frozen_copy()
        base_copy.load_state_dict({**base_copy.state_dict(), **state["base"]})
    model.load_state_dict({**model.state_dict(), **state["model"]})
    return list(state["results"]), base_copy, state["session"] + 1
