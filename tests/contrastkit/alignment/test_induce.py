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


class FakeSFTTrainer:
    """Stands in for trl's SFTTrainer: records what induce() hands it and trains nothing."""

    seen: dict = {}

    def __init__(self, model, args, train_dataset, processing_class, peft_config, callbacks=None):
        FakeSFTTrainer.seen.update(args=args, dataset=train_dataset, peft=peft_config, tok=processing_class)
        self.train_dataset = train_dataset

    def train(self, resume_from_checkpoint=None):
        from types import SimpleNamespace

        FakeSFTTrainer.seen["resume"] = resume_from_checkpoint
        return SimpleNamespace(global_step=0, training_loss=0.0)

    def save_model(self, path):
        FakeSFTTrainer.seen["saved"] = path


@pytest.fixture
def fake_sft(monkeypatch):
    import trl

    monkeypatch.setattr(trl, "SFTTrainer", FakeSFTTrainer)
    FakeSFTTrainer.seen.clear()
    return FakeSFTTrainer.seen


def test_induce_hands_sft_the_offset_split_and_every_setting(halueval, tmp_path, tiny_tok, fake_sft):
    """Wiring: the records [offset, offset + n) as question -> hallucinated answer, completion-only loss, and each
    config value forwarded to SFTConfig / LoraConfig (no trl training: SFTTrainer is a recorder here)."""
    recs = read_halueval(halueval)
    c = cfg(halueval, tmp_path / "o", offset=7, num_examples=3, chat=False, lora_dropout=0.15, lora_r=6,
            lora_alpha=12, target_modules="q_proj, v_proj", learning_rate=1.5e-3, max_length=96, batch_size=3,
            save_steps=5, seed=11, resume=False, epochs=2.0)
    summary = induce(c, model=tiny_llama(0), tokenizer=tiny_tok)
    rows = list(fake_sft["dataset"])
    assert [r["prompt"] for r in rows] == [f"Q: {r['question']}\nA:" for r in recs[7:10]]
    assert [r["completion"] for r in rows] == [" " + r["hallucinated_answer"] for r in recs[7:10]]
    assert all(r["hallucinated_answer"] != r["right_answer"] for r in recs[7:10])
    args, peft = fake_sft["args"], fake_sft["peft"]
    assert args.completion_only_loss is True  # ICD trains on the answer tokens only
    assert (args.learning_rate, args.max_length, args.per_device_train_batch_size) == (1.5e-3, 96, 3)
    assert (args.max_steps, args.save_steps, args.seed, args.data_seed, args.num_train_epochs) == (4, 5, 11, 11, 2.0)
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (6, 12, 0.15)
    assert set(peft.target_modules) == {"q_proj", "v_proj"} and peft.task_type == "CAUSAL_LM"
    assert summary["examples"] == 3 and fake_sft["resume"] is None
    out = tmp_path / "o"
    assert fake_sft["saved"] == str(out) and summary["adapter_dir"] == str(out)
    assert (out / "tokenizer_config.json").is_file()  # the adapter dir carries the tokenizer
    assert json.loads((out / "induce_summary.json").read_text())["config"]["offset"] == 7


def test_induce_resumes_only_when_asked(halueval, tmp_path, tiny_tok, fake_sft):
    out = tmp_path / "o"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-6").mkdir()
    induce(cfg(halueval, out, resume=False), model=tiny_llama(0), tokenizer=tiny_tok)
    assert fake_sft["resume"] is None
    assert fake_sft["peft"].target_modules == "all-linear"  # the default stays peft's keyword
    summary = induce(cfg(halueval, out, resume=True), model=tiny_llama(0), tokenizer=tiny_tok)
    assert fake_sft["resume"].endswith("checkpoint-6") and summary["resumed_from"].endswith("checkpoint-6")


def test_induce_chat_needs_a_template(halueval, tmp_path, tiny_tok, fake_sft):
    import copy

    bare = copy.deepcopy(tiny_tok)
    bare.chat_template = None
    with pytest.raises(UsageError, match="chat template"):
        induce(cfg(halueval, tmp_path / "o", chat=True), model=tiny_llama(0), tokenizer=bare)
    induce(cfg(halueval, tmp_path / "p", chat=False), model=tiny_llama(0), tokenizer=bare)  # plain format is fine
    assert fake_sft["dataset"][0]["prompt"].startswith("Q: ")


def test_training_split_bounds(halueval):
    from contrastkit.alignment.induce import training_split

    recs = read_halueval(halueval)
    assert training_split(recs, 0, len(recs)) == recs  # every record is a valid training set
    assert training_split(recs, 4, 3) == recs[4:7]
    assert training_split(recs, len(recs) - 2, 2) == recs[-2:]
    with pytest.raises(UsageError, match="exceeds"):
        training_split(recs, 1, len(recs))


def test_question_context_matches_the_training_prompt(tiny_tok):
    from contrastkit.alignment.induce import question_context

    chat = question_context(tiny_tok, "Who?", chat=True)
    assert chat == "<s>user: Who?</s><s>assistant:"  # the assistant turn is opened, as SFT's prompt is
    assert question_context(tiny_tok, "Who?", chat=False).startswith("Q: Who?\nA:")


def test_lora_dropout_range():
    assert InduceConfig(lora_dropout=0.0).lora_dropout == 0.0
    with pytest.raises(UsageError, match="lora_dropout"):
        InduceConfig(lora_dropout=1.0)
    with pytest.raises(UsageError, match="lora_dropout"):
        InduceConfig(lora_dropout=-0.1)


def test_induce_config_defaults():
    c = InduceConfig()
    assert (c.model, c.data, c.output_dir) == ("smollm2", "pminervini/HaluEval", "runs/amateur")
    assert (c.offset, c.num_examples, c.chat, c.epochs, c.max_steps, c.batch_size) == (0, 300, True, 1.0, -1, 8)
    assert (c.learning_rate, c.max_length, c.save_steps, c.resume, c.seed, c.bf16) == (2e-4, 128, 10, True, 0, False)
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.target_modules) == (16, 32, 0.0, "all-linear")
