"""``contrastkit train ranker`` end to end on tiny models: accuracy before/after, checkpoints, resume, round trip."""

from __future__ import annotations

import json
import random

import pytest
import torch

from contrastkit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, tiny_tok):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tiny_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256, pad_token_id=tiny_tok.pad_token_id)
    path = tmp_path_factory.mktemp("enc") / "tiny-bert"
    BertModel(cfg).save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from contrastkit.testing import CORPUS_WORDS

    rng = random.Random(0)
    docs = []
    for _ in range(5):
        sents = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                 for _ in range(24)]
        docs.append(" ".join(sents))
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n\n".join(docs))
    return path


def args(out, enc, data, gen, steps):
    return ["train", "ranker", "--output_dir", str(out), "--encoder", str(enc), "--data", str(data),
            "--generator", str(gen), "--generator_max_new_tokens", "6", "--prefix_words", "15",
            "--min_continuation_words", "4", "--max_continuation_words", "12", "--batch_size", "3",
            "--eval_documents", "1", "--max_steps", str(steps), "--save_steps", "2", "--learning_rate", "1e-3",
            "--pooling", "first", "--progress", "false"]


def test_train_ranker_resume_and_round_trip(tmp_path, tiny_encoder_dir, corpus, tiny_model_dir, capsys):
    from contrastkit.rankers import get_ranker

    straight = tmp_path / "straight"
    assert main(args(straight, tiny_encoder_dir, corpus, tiny_model_dir, 4)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["global_step"] == 4 and summary["generative_negatives"]
    assert 0.0 <= summary["heldout_accuracy_before"] <= 1.0 and 0.0 <= summary["heldout_accuracy_after"] <= 1.0
    assert (straight / "checkpoint-2").is_dir() and (straight / "checkpoint-4").is_dir()
    full = json.loads((straight / "train_summary.json").read_text())
    assert len(full["losses"]) == 4 and all(l > 0 for l in full["losses"])

    # interrupted after 2 steps, then resumed to 4: the same weights as the uninterrupted run
    resumed = tmp_path / "resumed"
    assert main(args(resumed, tiny_encoder_dir, corpus, tiny_model_dir, 2)) == 0
    assert main(args(resumed, tiny_encoder_dir, corpus, tiny_model_dir, 4)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["resumed_from"].endswith("checkpoint-2") and out["global_step"] == 4
    a, b = get_ranker(f"rankgen:{straight}", device="cpu"), get_ranker(str(resumed), device="cpu")
    prefixes, conts = ["the king went to the city.", "a dog"], ["he saw a ship.", "the river"]
    torch.testing.assert_close(a.score(prefixes, conts), b.score(prefixes, conts), rtol=1e-5, atol=1e-5)

    # training changed the weights, and the saved ranker reproduces the checkpoint-4 scores exactly
    fresh = get_ranker(str(straight / "checkpoint-2"), device="cpu")
    assert not torch.allclose(fresh.score(prefixes, conts), a.score(prefixes, conts))
    ck4 = get_ranker(str(straight / "checkpoint-4"), device="cpu")
    assert torch.equal(ck4.score(prefixes, conts), a.score(prefixes, conts))


def test_saved_scores_round_trip_exactly(tmp_path, tiny_encoder_dir, corpus):
    from contrastkit.rankers import get_ranker
    from contrastkit.rankers.trainer import RankerTrainConfig, train_ranker

    cfg = RankerTrainConfig(output_dir=str(tmp_path / "r"), encoder=str(tiny_encoder_dir), data=str(corpus),
                            generator="none", prefix_words=15, min_continuation_words=4, max_continuation_words=12,
                            batch_size=3, eval_documents=1, max_steps=2, learning_rate=1e-3, progress=False)
    ranker, summary = train_ranker(cfg)
    assert not summary["generative_negatives"]
    loaded = get_ranker(f"rankgen:{tmp_path / 'r'}", device="cpu")
    prefixes, conts = ["the king went to the city.", "a dog"] * 2, ["he saw a ship.", "the river", "x", "y z"]
    assert torch.equal(loaded.score(prefixes, conts), ranker.score(prefixes, conts))
    assert loaded.meta == ranker.meta and loaded.meta.pooling == "mean"


def test_bad_flags_are_one_line_errors(tmp_path, corpus, capsys):
    assert main(["train", "ranker", "--batch_size", "1", "--data", str(corpus)]) == 2
    assert "batch_size must be in [2, inf]" in capsys.readouterr().err
    assert main(["train", "ranker", "--data", str(tmp_path / "nope.txt"), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main(["train", "ranker", "--pooling", "cls", "--data", str(corpus)]) == 2
