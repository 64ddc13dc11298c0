"""`contrastkit train export`: which base model, an empty output folder, --dtype, and no leftovers on failure."""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit.cli.main import main as ck
from contrastkit.cli.train_export import ExportConfig, base_model_of, export
from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_adapter(path, base="org/from-adapter-config", summary_model=None):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    if summary_model is not False:
        (path / "train_summary.json").write_text(json.dumps({"model": summary_model, "steps": 3}))
    return path


def test_base_model_priority(tmp_path):
    a = _fake_adapter(tmp_path / "a", summary_model="org/from-summary")
    out = str(tmp_path / "out")
    assert base_model_of(ExportConfig(adapter=str(a), output_dir=out)) == "org/from-summary"
    assert base_model_of(ExportConfig(adapter=str(a), output_dir=out, model="org/flag")) == "org/flag"
    b = _fake_adapter(tmp_path / "b", summary_model=None)  # summary without a model
    assert base_model_of(ExportConfig(adapter=str(b), output_dir=out)) == "org/from-adapter-config"
    c = _fake_adapter(tmp_path / "c", summary_model=False)  # no summary at all
    assert base_model_of(ExportConfig(adapter=str(c), output_dir=out)) == "org/from-adapter-config"
    d = _fake_adapter(tmp_path / "d", base=None, summary_model=False)
    with pytest.raises(UsageError, match="does not name its base model; pass --model"):
        base_model_of(ExportConfig(adapter=str(d), output_dir=out))
    e = _fake_adapter(tmp_path / "e", base="", summary_model="")
    with pytest.raises(UsageError, match="pass --model"):
        base_model_of(ExportConfig(adapter=str(e), output_dir=out))


def test_config_checks(tmp_path):
    a = _fake_adapter(tmp_path / "a")
    with pytest.raises(UsageError, match="--adapter is required"):
        ExportConfig(output_dir=str(tmp_path / "o"))
    with pytest.raises(UsageError, match="--output_dir is required"):
        ExportConfig(adapter=str(a))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="already exists"):
        ExportConfig(adapter=str(a), output_dir=str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    ExportConfig(adapter=str(a), output_dir=str(tmp_path / "empty"))  # an empty folder is fine


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from contrastkit.models import load_model

    base, _ = load_model(str(tiny_model_dir))
    path = tmp_path_factory.mktemp("adapter") / "run"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(path)
    return path


def test_export_into_empty_folder_with_dtype(real_adapter, tiny_model_dir, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "merged"
    out.mkdir()
    assert ck(["train", "export", "--adapter", str(real_adapter), "--output_dir", str(out), "--model",
               str(tiny_model_dir), "--dtype", "bfloat16"]) == 0, capsys.readouterr().err
    assert "merged" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert not list(tmp_path.glob("*.tmp-export"))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out))("the cat")["input_ids"]  # the tokenizer travels with it


def test_failed_export_leaves_nothing(real_adapter, tiny_model_dir, tmp_path, monkeypatch):
    import contrastkit.models as models

    class Merged:
        def save_pretrained(self, path, **kw):
            from pathlib import Path

            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"partial")

    class Model:
        def merge_and_unload(self):
            return Merged()

    class Tok:
        def save_pretrained(self, path):
            raise OSError("disk full")

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (Model(), Tok()))
    out = tmp_path / "merged"
    with pytest.raises(OSError, match="disk full"):
        export(ExportConfig(adapter=str(real_adapter), output_dir=str(out), model=str(tiny_model_dir)))
    assert not out.exists() and not list(tmp_path.iterdir())
