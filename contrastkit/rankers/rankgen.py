"""RankGen encoder (Krishna et al. 2022, arXiv 2205.09726 section 2.1) in our own small module.

score(prefix, continuation) = proj(enc("pre " + prefix)[0]) · proj(enc("suffi " + continuation)[0]):
the encoder's **first-token** last hidden state, a **bias-free** linear projection, **no**
normalisation, a raw dot product (reference: ``rankgen_model/modeling_rankgen.py``,
``rankgen_encoder.py``; ../shared/research/decoding.md section 3.1). Prefixes are cut to 512
tokens and continuations to 128 after padding, as the reference does (a long input loses its
``</s>``). Inputs are always padded on the right so that the first token is never a pad.

Checkpoints read without ``trust_remote_code``:

* the published Hub format of ``kalpeshk2011/rankgen-t5-*``: ``config.json`` (a ``T5Config``)
  and ``pytorch_model.bin``/``model.safetensors`` with keys ``t5_encoder.*`` and
  ``projection.weight``; the tokenizer is the folder's own if it has one, else
  ``google/t5-v1_1-{base|large|xl}`` chosen by ``d_model`` (the reference's choice);
* what ``contrastkit train ranker`` saves: any HF encoder, keys ``encoder.*`` +
  ``projection.weight``, its tokenizer, and ``rankgen_ranker.json`` (markers, lengths, pooling).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from contrastkit.errors import UsageError, did_you_mean
from contrastkit.rankers.base import DotProductRanker
from contrastkit.registry import register_ranker

META_FILE = "rankgen_ranker.json"
T5_V11_BY_DMODEL = {768: "base", 1024: "large", 2048: "xl"}
POOLINGS = ("first", "mean")
DEFAULT_CHECKPOINT = "kalpeshk2011/rankgen-t5-xl-all"


@dataclass
class RankGenMeta:
    """How a RankGen-style encoder reads its inputs (defaults: the reference implementation)."""

    prefix_marker: str = field(default="pre ", metadata={"help": "Text put before every prefix (reference: 'pre ')."})
    suffix_marker: str = field(default="suffi ", metadata={
        "help": "Text put before every continuation (reference code: 'suffi '; the paper says 'suf')."})
    max_prefix_tokens: int = field(default=512, metadata={"help": "Prefix tokens kept (reference: 512)."})
    max_suffix_tokens: int = field(default=128, metadata={"help": "Continuation tokens kept (reference: 128)."})
    pooling: str = field(default="first", metadata={
        "help": "first = first-token state (RankGen); mean = masked mean (ours, for sentence encoders)."})

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}."
                             f"{did_you_mean(self.pooling, POOLINGS)}")
        if self.max_prefix_tokens < 1 or self.max_suffix_tokens < 1:
            raise UsageError("max_prefix_tokens and max_suffix_tokens must be >= 1")


class RankGenEncoder(nn.Module):
    """An HF encoder + a bias-free ``d -> d`` projection of its pooled last hidden state."""

    def __init__(self, encoder: nn.Module, pooling: str = "first"):
        super().__init__()
        d = encoder.config.d_model if hasattr(encoder.config, "d_model") else encoder.config.hidden_size
        self.encoder = encoder
        self.projection = nn.Linear(d, d, bias=False)
        self.pooling = pooling

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (n, T, d)
        if self.pooling == "first":
            pooled = hidden[:, 0]
        else:
            m = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return self.projection(pooled)  # (n, d)


def _encoder_from_config(cfg_dict: dict):
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    cfg_dict = {k: v for k, v in cfg_dict.items() if k not in ("auto_map", "architectures", META_FILE)}
    model_type = cfg_dict.pop("model_type", None)
    if not model_type:
        raise UsageError("ranker config.json has no model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    return T5EncoderModel(config) if model_type in ("t5", "mt5", "umt5") else AutoModel.from_config(config)


def _read_state_dict(path: Path) -> dict:
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UsageError(f"ranker '{path}' has no model.safetensors or pytorch_model.bin")


def load_module(path: Path, pooling: str) -> RankGenEncoder:
    """Read a Hub-format or contrastkit-format RankGen checkpoint into :class:`RankGenEncoder`."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise UsageError(f"ranker '{path}' has no config.json: expected a RankGen checkpoint directory")
    module = RankGenEncoder(_encoder_from_config(json.loads(cfg_file.read_text())), pooling)
    state = _read_state_dict(path)
    prefix = "t5_encoder." if any(k.startswith("t5_encoder.") for k in state) else "encoder."
    enc_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "projection.weight" not in state:
        raise UsageError(f"ranker '{path}': the weights have no projection.weight (not a RankGen checkpoint)")
    module.projection.load_state_dict({"weight": state["projection.weight"]})
    missing, unexpected = module.encoder.load_state_dict(enc_state, strict=False)
    tied = {"encoder.embed_tokens.weight", "shared.weight"}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise UsageError(f"ranker '{path}': weights do not fit the config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return module


class RankGenRanker(DotProductRanker):
    """RankGen scores: raw dot product of projected first-token states (arXiv 2205.09726 section 2.1)."""

    name = "rankgen"

    def __init__(self, module: RankGenEncoder, tokenizer, meta: RankGenMeta | None = None, *,
                 batch_size: int = 32, device: str | None = None):
        self.meta = meta or RankGenMeta()
        module.pooling = self.meta.pooling
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module = module.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def tokenize(self, texts: list[str], marker: str, max_tokens: int):
        """Marker + text, padded on the right to the longest, then cut to ``max_tokens`` (as the reference)."""
        enc = self.tokenizer([marker + t for t in texts], padding=True, return_tensors="pt", padding_side="right")
        return enc["input_ids"][:, :max_tokens], enc["attention_mask"][:, :max_tokens]

    def _encode(self, texts: list[str], marker: str, max_tokens: int) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids, mask = self.tokenize(texts[i:i + self.batch_size], marker, max_tokens)
            with torch.no_grad():
                out.append(self.module(ids.to(self.device), mask.to(self.device)).float())
        return torch.cat(out) if out else torch.empty(0, self.module.projection.out_features)

    def encode_prefixes(self, texts):
        return self._encode(list(texts), self.meta.prefix_marker, self.meta.max_prefix_tokens)

    def encode_continuations(self, texts):
        return self._encode(list(texts), self.meta.suffix_marker, self.meta.max_suffix_tokens)

    @classmethod
    def load(cls, path: str | None = None, *, tokenizer=None, device: str | None = None, batch_size: int = 32):
        """Load a local checkpoint (Hub format or ours); a Hub id is downloaded first (needs network)."""
        path = path or DEFAULT_CHECKPOINT
        p = Path(path).expanduser()
        if not p.is_dir():
            p = _download(path)
        meta = RankGenMeta(**json.loads((p / META_FILE).read_text())) if (p / META_FILE).exists() else RankGenMeta()
        module = load_module(p, meta.pooling)
        if tokenizer is None:
            tokenizer = _tokenizer_for(p, module)
        return cls(module, tokenizer, meta, batch_size=batch_size, device=device)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config.json, model.safetensors (``encoder.*`` + ``projection.weight``), tokenizer, meta."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        enc = self.module.encoder
        (path / "config.json").write_text(json.dumps(enc.config.to_dict(), indent=1, default=str))
        state = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
        state["projection.weight"] = self.module.projection.weight.detach().cpu().contiguous()
        save_file(_untie(state), str(path / "model.safetensors"))
        self.tokenizer.save_pretrained(str(path))
        (path / META_FILE).write_text(json.dumps(asdict(self.meta), indent=1))
        return path


def _untie(state: dict) -> dict:
    """safetensors refuses shared storage: clone tensors that alias an earlier one."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _tokenizer_for(path: Path, module: RankGenEncoder):
    from transformers import AutoTokenizer

    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "spiece.model")):
        return AutoTokenizer.from_pretrained(str(path))
    size = T5_V11_BY_DMODEL.get(module.projection.in_features)
    if size is None:
        raise UsageError(f"ranker '{path}' has no tokenizer files; pass tokenizer=...")
    try:
        return AutoTokenizer.from_pretrained(f"google/t5-v1_1-{size}")
    except OSError:
        raise UsageError(f"ranker '{path}' has no tokenizer files and google/t5-v1_1-{size} (its tokenizer, "
                         f"as in the reference) is not reachable offline; pass tokenizer=...") from None


def _download(hub_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id))
    except Exception as e:  # offline, no such repo, ...
        raise UsageError(f"ranker checkpoint '{hub_id}' is not a local directory and could not be downloaded "
                         f"({type(e).__name__}); pass a local RankGen checkpoint directory") from None


register_ranker("rankgen")(RankGenRanker)
