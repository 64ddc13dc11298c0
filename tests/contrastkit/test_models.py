"""The one loader: each source kind, the GGUF cache, adapters, and clear errors for bad inputs."""

import json

import pytest
import torch

from contrastkit.errors import UsageError
from contrastkit.models import ModelConfig, gguf_cache_dir, load_model, resolve_source


def test_local_dir_loads_with_left_padding_tokenizer(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_model_config_and_train_purpose(tiny_model_dir):
    model, _ = load_model(ModelConfig(model=str(tiny_model_dir), attn_implementation="eager"), purpose="train")
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(UsageError, match="inference only"):
        load_model(str(tiny_model_dir), purpose="train", device_map="auto")


def test_bf16_dtype(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("bad, match", [
    ("/no/such/dir", "does not exist"),
    ("./missing-model", "does not exist"),
    ("smolm2", "Did you mean 'smollm2'"),
    ("some-org/some-model", "not in the Hugging Face cache"),
])
def test_missing_model_errors(bad, match):
    with pytest.raises(UsageError, match=match):
        load_model(bad)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A working directory with runs/amateur (a model-like folder) and runs/amateur-old beside it."""
    for name in ("amateur", "dpo"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name, expected", [
    ("runs/amateurX", True),       # first folder exists here: a path, not the Hub id runs/amateurX
    ("./x", True), ("../x", True), ("~/x", True), ("/abs/x", True),
    ("a/b/c", True),               # more than one separator
    ("m.gguf", True), ("dir\\m", True),
    ("org/name", False),           # a Hub id (no folder 'org' here)
    ("gpt2", False),
])
def test_looks_like_path(runs_dir, name, expected):
    from contrastkit.models import looks_like_path

    assert looks_like_path(name) is expected


def test_mistyped_local_path_fails_at_once_with_sibling_suggestion(runs_dir, monkeypatch):
    import contrastkit.models as m

    monkeypatch.setattr(m, "hub_reachable", lambda *a, **k: pytest.fail("a path must never reach the Hub"))
    with pytest.raises(UsageError, match=r"model path 'runs/amateurX' does not exist\. Did you mean 'runs/amateur'\?"):
        resolve_source("runs/amateurX")
    with pytest.raises(UsageError, match="Did you mean 'runs/amateur'"):  # also from the config, before any load
        ModelConfig(model="runs/amatuer")
    with pytest.raises(UsageError, match=r"adapter path 'runs/dpoo' does not exist\. Did you mean 'runs/dpo'"):
        ModelConfig(adapter="runs/dpoo")
    with pytest.raises(UsageError, match="adapter path 'zzz' does not exist"):  # an adapter is always local
        ModelConfig(adapter="zzz")
    ModelConfig(model="org/name", adapter="runs/dpo")  # a Hub-looking id and an existing adapter pass


def test_hub_id_offline_fails_at_once_and_unreachable_suggests_offline(monkeypatch):
    import contrastkit.models as m

    calls = []
    monkeypatch.setattr(m, "_in_hub_cache", lambda repo: False)
    monkeypatch.setattr(m, "hub_reachable", lambda *a, **k: calls.append(1) or False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        load_model("some-org/some-model")
    assert calls == []  # offline: not even one connection attempt
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(UsageError, match="Hub is unreachable.*set HF_HUB_OFFLINE=1"):
        load_model("some-org/some-model")
    assert calls == [1]


def test_hub_id_in_cache_loads_local_files_only(monkeypatch, tiny_model_dir):
    import contrastkit.models as m

    seen = {}
    monkeypatch.setattr(m, "_in_hub_cache", lambda repo: True)
    monkeypatch.setattr(m, "hub_reachable", lambda *a, **k: False)
    kwargs = {}
    m.check_hub(m.ModelSource("hub", "org/cached"), kwargs)
    seen.update(kwargs)
    assert seen == {"local_files_only": True}
    kwargs = {}
    m.check_hub(m.ModelSource("dir", str(tiny_model_dir)), kwargs)  # local sources are untouched
    assert kwargs == {}


def test_file_that_is_not_a_model(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(UsageError, match="is not a model"):
        load_model(str(txt))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        load_model(str(empty))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(UsageError, match="not a readable GGUF"):
        load_model(str(fake))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    with pytest.raises(UsageError, match="unsupported architecture"):
        load_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(UsageError, match="dtype must be one of"):
        ModelConfig(dtype="fp8")


def _lora_adapter(model, path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(path)
    return path


def test_adapter_applies_and_changes_outputs(tiny_model_dir, tmp_path):
    from contrastkit.testing import tiny_llama

    base = tiny_llama(init_range=0.3)
    base.load_state_dict(load_model(str(tiny_model_dir))[0].state_dict())
    adapter = _lora_adapter(base, tmp_path / "adapter")
    model, tok = load_model(str(tiny_model_dir), adapter=str(adapter))
    from peft import PeftModel

    assert isinstance(model, PeftModel)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        with_adapter = model(ids).logits
        with model.disable_adapter():
            without = model(ids).logits
    assert not torch.allclose(with_adapter, without)


def test_adapter_that_does_not_fit(tiny_model_dir, tmp_path):
    from contrastkit.testing import tiny_llama

    other = tiny_llama(vocab_size=300)  # different embedding size
    other.config.hidden_size = 64
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False)
    get_peft_model(other, cfg).save_pretrained(tmp_path / "misfit")
    with pytest.raises(UsageError, match="does not fit the base model"):
        load_model(str(tiny_model_dir), adapter=str(tmp_path / "misfit"))
    with pytest.raises(UsageError, match="adapter .* does not exist"):
        load_model(str(tiny_model_dir), adapter=str(tmp_path / "nope"))


def test_resolve_embedded_source_points_at_packaged_gguf():
    src = resolve_source("smollm2")
    assert src.kind == "gguf" and src.gguf_file.endswith(".gguf")


@pytest.mark.integration
def test_gguf_cache_miss_then_hit(tmp_path, monkeypatch):
    """A fresh cache dequantizes once; the second load reads safetensors and never touches the GGUF path."""
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "cache"))
    src = resolve_source("smollm2")
    from pathlib import Path

    gguf_path = Path(src.path) / src.gguf_file
    target = gguf_cache_dir(gguf_path)
    assert not target.exists()
    model, tok = load_model(str(gguf_path))  # the .gguf file path form
    assert (target / "model.safetensors").exists() and not list(target.parent.glob("*.tmp-*"))

    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def guard(cls, path, *args, **kwargs):
        assert "gguf_file" not in kwargs, "cache hit must not dequantize again"
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(guard))
    model2, _ = load_model("smollm2")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)


@pytest.mark.integration
def test_embedded_encoder_alias(minilm):
    model, tok = minilm
    batch = tok(["a cat", "a dog"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384
