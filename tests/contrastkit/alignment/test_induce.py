"""Amateur induction (ICD LoRA SFT on HaluEval QA): checkpoints, resume after interruption, CLI errors."""

import json

import pytest
import torch
from transformers import TrainerCallback

import contrastkit
from contrastkit.alignment.induce import InduceConfig, held_out, induce, read_halueval, sft_example
from contrastkit.cli.train_induce import main
from contrastkit.errors import UsageError
from contrastkit.testing import tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def halueval(shared_data):
    return shared_data / "halueval" / "qa_data_first1000.json"


class StopAt(TrainerCallback):
    """Simulate Ctrl-C after a given optimizer step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def cfg(data, out, **kw):
    base = dict(data=str(data), output_dir=str(out), num_examples=16, batch_size=4, max_steps=4, save_steps=2,
                max_length=256, lora_r=4, lora_alpha=8)
    return InduceConfig(**{**base, **kw})


def adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_resume_after_interruption_equals_uninterrupted_run(halueval, tmp_path, tiny_tok):
    full = induce(cfg(halueval, tmp_path / "full"), model=tiny_llama(0, init_range=0.3), tokenizer=tiny_tok)
    assert full["global_step"] == 4 and full["resumed_from"] is None
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        induce(cfg(halueval, out), model=tiny_llama(0, init_range=0.3), tokenizer=tiny_tok, callbacks=[StopAt(3)])
    assert (out / "checkpoint-2").is_dir() and not (out / "adapter_config.json").exists()
    resumed = induce(cfg(halueval, out), model=tiny_llama(0, init_range=0.3), tokenizer=tiny_tok)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 4
    a, b = adapter_weights(tmp_path / "full"), adapter_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # training moved the adapter
    # the adapter directory is accepted as the amateur of the contrastive strategies
    expert = tiny_llama(0, init_range=0.3)
    res = contrastkit.generate(expert, tiny_tok, "the cat", "icd", max_new_tokens=4, amateur=str(out))
    assert len(res[0].token_ids) >= 1


def test_data_split_and_format(halueval):
    recs = read_halueval(halueval)
    c = InduceConfig(data=str(halueval), offset=10, num_examples=20)
    rest = held_out(recs, c)
    assert len(rest) == len(recs) - 20 and recs[10] not in rest and recs[9] in rest and recs[30] in rest
    ex = sft_example(recs[0], chat=True)
    assert ex["completion"][0]["content"] == recs[0]["hallucinated_answer"]
    assert ex["prompt"][0]["content"] == recs[0]["question"]


def test_bad_input(tmp_path, halueval, capsys):
    with pytest.raises(UsageError, match="num_examples must be in"):
        InduceConfig(num_examples=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UsageError, match="bad.json:1: missing"):
        read_halueval(bad)
    assert main(["--data", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--data", str(halueval), "--num_examples", "5000", "--output_dir", str(tmp_path / "o")]) == 2
    assert "exceeds" in capsys.readouterr().err
    assert main(["--lora_r", "0"]) == 2


def test_halueval_hub_id_is_loaded_with_datasets(monkeypatch):
    """The default --data is the Hub id: read through datasets.load_dataset(id, 'qa', split='data'); a failure
    (offline) is the one-line missing-data error naming the flag for a local copy."""
    import datasets

    rec = {"knowledge": "k", "question": "q?", "right_answer": "a", "hallucinated_answer": "b"}
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([rec, rec])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert read_halueval("pminervini/HaluEval") == [rec, rec]
    assert calls == [(("pminervini/HaluEval", "qa"), {"split": "data"})]

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match="--data"):
        read_halueval("pminervini/HaluEval")
