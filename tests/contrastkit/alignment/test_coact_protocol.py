"""Session protocol and runner: splits, metrics, zero-epoch reduction, resume, baselines, a tiny ViT."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from contrastkit.alignment.coact_config import CoACTConfig, ProtocolConfig
from contrastkit.alignment.coact_data import Collator, Examples, embed_examples
from contrastkit.alignment.coact_model import CoACTModel
from contrastkit.alignment.coact_protocol import make_sessions, run_summary, session_metrics
from contrastkit.alignment.coact_runner import run_method
from contrastkit.alignment.coact_testing import (
    synthetic_images,
    synthetic_text,
    tiny_bert,
    tiny_vit,
    tiny_word_tokenizer,
)
from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

P = ProtocolConfig(base_classes=4, ways=2, shots=3, sessions=2, base_epochs=1, inc_epochs=1, batch_size=8,
                   learning_rate=0.1, max_length=16)


@pytest.fixture(scope="module")
def text_data():
    tr_x, tr_y = synthetic_text(9, 6, 0)
    te_x, te_y = synthetic_text(9, 3, 1)
    return tr_x, tr_y, te_x, te_y


def _run(method, data, protocol=P, cfg=None, **kw):
    tr_x, tr_y, te_x, te_y = data
    return run_method(method, encoder_fn=lambda: tiny_bert(0), tokenizer=tiny_word_tokenizer(), train_inputs=tr_x,
                      train_labels=tr_y, test_inputs=te_x, test_labels=te_y, protocol=protocol,
                      coact=cfg or CoACTConfig(), seed=kw.pop("seed", 0), **kw)


def test_sessions_split_counts_order_and_seed():
    labels = [f"c{c}" for c in range(9) for _ in range(6)]
    test = [f"c{c}" for c in range(9) for _ in range(3)]
    p = dataclasses.replace(P, base_shots=2, test_per_class=2)
    s = make_sessions(labels, test, p, seed=0)
    assert len(s.classes) == 8 and len(set(s.classes)) == 8
    assert [len(t) for t in s.train_idx] == [4 * 2, 2 * 3, 2 * 3]
    assert s.train_labels[1].tolist() == [4, 4, 4, 5, 5, 5]
    for sess, (idx, lab) in enumerate(zip(s.train_idx, s.train_labels)):  # raw rows really are those classes
        assert all(labels[i] == s.classes[c] for i, c in zip(idx.tolist(), lab.tolist()))
        assert len(set(idx.tolist())) == len(idx)
    assert len(s.test_idx) == 8 * 2 and all(test[i] == s.classes[c] for i, c in zip(s.test_idx.tolist(),
                                                                                    s.test_labels.tolist()))
    assert s.seen_classes(0) == 4 and s.seen_classes(2) == 8
    assert make_sessions(labels, test, p, seed=0).classes == s.classes
    assert make_sessions(labels, test, p, seed=1).classes != s.classes


def test_sessions_class_with_exactly_k_examples_is_enough():
    labels = [f"c{c}" for c in range(8) for _ in range(6)] + ["c8"] * P.shots
    s = make_sessions(labels, ["c0"], dataclasses.replace(P, sessions=2), seed=0)
    assert len(s.classes) == 8


@pytest.mark.parametrize("labels,test,match", [
    ([f"c{c}" for c in range(7) for _ in range(6)], ["c0"], "too many classes requested: .* = 8, but .* has 7"),
    ([f"c{c}" for c in range(9) for _ in range(6)], ["c0", "cx"], "test label 'cx' never occurs"),
    ([f"c{c}" for c in range(9) for _ in range(6)] + ["c9", "c9"], ["c0"], "class 'c9' has 2 training examples"),
])
def test_sessions_bad_input(labels, test, match):
    with pytest.raises(UsageError, match=match):
        make_sessions(labels, test, P, seed=0)


def test_session_metrics_and_summary_hand_computed():
    preds = torch.tensor([0, 1, 1, 5, 4, 4])
    labels = torch.tensor([0, 1, 2, 3, 4, 5])  # base = {0,1,2}: 2/3 right; new = {3,4,5}: 1/3 right (4 only)
    m = session_metrics(preds, labels, base_classes=3)
    assert m["acc"] == pytest.approx(0.5) and m["acc_base"] == pytest.approx(2 / 3)
    assert m["acc_new"] == pytest.approx(1 / 3)
    assert session_metrics(preds[:3], labels[:3], 3)["acc_new"] is None
    s = run_summary([{"acc": 0.9, "acc_base": 0.9, "acc_new": None}, {"acc": 0.7, "acc_base": 0.8, "acc_new": 0.5},
                     {"acc": 0.5, "acc_base": 0.6, "acc_new": 0.3}])
    assert s["avg_acc"] == pytest.approx(0.7) and s["final_acc"] == 0.5 and s["drop"] == pytest.approx(0.4)
    assert s["base_forgetting"] == pytest.approx(0.3) and s["final_acc_new"] == 0.3


def test_zero_incremental_epochs_is_base_model_plus_prototype_rows(text_data, tmp_path):
    p = dataclasses.replace(P, inc_epochs=0)
    r0 = _run("coact", text_data, p, out_dir=tmp_path, stop_after=0)
    s0 = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    r2 = _run("coact", text_data, p, out_dir=tmp_path)
    assert len(r0) == 1 and [r["session"] for r in r2] == [0, 1, 2]
    s2 = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert set(s0) == set(s2)
    for k in s0:
        if k not in ("classifier.weight", "seen"):
            assert torch.equal(s0[k], s2[k]), k
    # the EMA callback and controlled fine-tuning ran in session 0: the teacher moved in the top block only
    pre = dict(tiny_bert(0).named_parameters())
    top, low = "encoder.layer.1.attention.self.query.weight", "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(s0["teacher." + top], pre[top]) and "teacher." + low not in s0
    w0, w2 = s0["classifier.weight"], s2["classifier.weight"]
    assert torch.equal(w0[:4], w2[:4]) and s2["seen"].all() and s0["seen"].tolist() == [True] * 4 + [False] * 4
    # rows 4..7 are the class means of the new shots under the session-0 encoder, recomputed from scratch
    model = CoACTModel(tiny_bert(0), 8, CoACTConfig())
    model.load_state_dict({**model.state_dict(), **s0})
    split = make_sessions(text_data[1], text_data[3], p, seed=0)
    for s in (1, 2):
        ex = Examples([text_data[0][i] for i in split.train_idx[s].tolist()], split.train_labels[s])
        emb = embed_examples(model, ex, Collator(tiny_word_tokenizer(), 16), 4)
        for c in split.train_labels[s].unique().tolist():
            assert torch.allclose(w2[c], emb[ex.labels == c].mean(0), atol=1e-5)


def test_resume_after_crash_equals_uninterrupted(text_data, tmp_path):
    full = _run("coact", text_data, out_dir=tmp_path / "a")
    _run("coact", text_data, out_dir=tmp_path / "b", stop_after=0)
    (tmp_path / "b" / "checkpoint.pt").rename(tmp_path / "b" / "session0.pt")
    crashed = _run("coact", text_data, out_dir=tmp_path / "b", stop_after=1)  # session 0 again, then 1, "crash"
    assert len(crashed) == 2
    resumed = _run("coact", text_data, out_dir=tmp_path / "b")
    assert [r["acc"] for r in resumed] == [r["acc"] for r in full]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for part in ("model", "base"):
        assert set(a[part]) == set(b[part])
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    s0 = torch.load(tmp_path / "b" / "session0.pt", weights_only=True)["model"]
    assert set(a["base"]) == {k for k in s0 if not k.startswith("teacher.")}
    assert all(torch.equal(a["base"][k], s0[k]) for k in a["base"])  # consistency target = session-0 model
    with pytest.raises(UsageError, match="other settings"):
        _run("coact", text_data, dataclasses.replace(P, shots=2), out_dir=tmp_path / "b")


def test_resume_refuses_changed_data_or_encoder_weights_behind_the_same_settings(text_data, tmp_path):
    """The checkpoint is keyed by the data's and the encoder's contents, not by names or paths."""
    tr_x, tr_y, te_x, te_y = text_data
    _run("prototype", text_data, out_dir=tmp_path, stop_after=0)
    edited = ([tr_x[0] + " edited"] + list(tr_x[1:]), tr_y, te_x, te_y)
    with pytest.raises(UsageError, match="other settings"):
        _run("prototype", edited, out_dir=tmp_path)
    relabelled = (tr_x, tr_y, te_x, list(reversed(te_y)))
    with pytest.raises(UsageError, match="other settings"):
        _run("prototype", relabelled, out_dir=tmp_path)
    with pytest.raises(UsageError, match="other settings"):  # same model name, other weights
        run_method("prototype", encoder_fn=lambda: tiny_bert(1), tokenizer=tiny_word_tokenizer(), train_inputs=tr_x,
                   train_labels=tr_y, test_inputs=te_x, test_labels=te_y, protocol=P, coact=CoACTConfig(), seed=0,
                   out_dir=tmp_path)
    assert len(_run("prototype", text_data, out_dir=tmp_path)) == P.sessions + 1  # unchanged: resumes


def test_prototype_baseline_is_frozen_encoder_nearest_mean_and_predictions_stay_seen(text_data):
    res = _run("prototype", text_data)
    tr_x, tr_y, te_x, te_y = text_data
    split = make_sessions(tr_y, te_y, P, seed=0)
    enc = tiny_bert(0)
    tok = tiny_word_tokenizer()

    def emb(texts):  # from scratch: mean pooling of the frozen encoder, no package code
        b = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    idx = torch.cat(split.train_idx)
    lab = torch.cat(split.train_labels)
    e = emb([tr_x[i] for i in idx.tolist()])
    protos = torch.stack([e[lab == c].mean(0) for c in range(8)])
    te_e = emb([te_x[i] for i in split.test_idx.tolist()])
    for s in range(3):
        k = split.seen_classes(s)
        keep = split.test_labels < k
        pred = (te_e[keep] @ protos[:k].T).argmax(-1)
        assert res[s]["acc"] == pytest.approx((pred == split.test_labels[keep]).float().mean().item(), abs=1e-6)
        assert res[s]["n_test"] == int(keep.sum())


def test_finetune_and_an_ablation_complete_all_sessions(text_data):
    accs = {m: [r["acc"] for r in _run(m, text_data)] for m in ("finetune", "coact-no-consistency")}
    assert all(len(v) == 3 for v in accs.values())


def test_tiny_vit_runs_the_protocol():
    x, y = synthetic_images(6, 5, 0)
    tx, ty = synthetic_images(6, 2, 1)
    p = ProtocolConfig(base_classes=2, ways=2, shots=3, sessions=2, base_epochs=1, inc_epochs=1, batch_size=8)
    for method in ("coact", "prototype"):
        res = run_method(method, encoder_fn=lambda: tiny_vit(0), tokenizer=None, train_inputs=x, train_labels=y,
                         test_inputs=tx, test_labels=ty, protocol=p, coact=CoACTConfig(), seed=0)
        assert [r["seen_classes"] for r in res] == [2, 4, 6] and [r["n_test"] for r in res] == [4, 8, 12]
        assert res[-1]["acc"] > 1 / 6  # colours are separable: far above chance


def test_runner_wiring_per_method_and_session(text_data, monkeypatch):
    """What each method hands the trainer per session: lr, epochs, trainable groups, session-0 model, teacher."""
    from contrastkit.alignment import coact_trainer

    calls = []

    def spy(self, *a, **k):
        m = self.model
        groups = {"lora": any(p.requires_grad for p in m.lora_parameters()),
                  "classifier": m.classifier.weight.requires_grad}
        calls.append((self.args.learning_rate, self.args.num_train_epochs, groups, self.base_model is not None,
                      m.teacher is not None, self.coact.consistency))

    monkeypatch.setattr(coact_trainer.CoACTTrainer, "train", spy)
    both = {"lora": True, "classifier": True}
    _run("coact", text_data)
    assert calls == [(0.1, 1, both, False, True, True)] + [(pytest.approx(0.01), 1, both, True, True, True)] * 2
    calls.clear()
    _run("coact", text_data, cfg=CoACTConfig(incft_layers="classifier", inc_lr_factor=0.5))
    assert [c[2] for c in calls[1:]] == [{"lora": False, "classifier": True}] * 2 and calls[1][0] == 0.05
    calls.clear()
    _run("finetune", text_data)
    assert calls == [(0.1, 1, both, False, False, False)] * 3
    calls.clear()
    _run("coact-no-consistency", text_data)
    assert [c[3:] for c in calls] == [(False, True, False)] + [(True, True, False)] * 2
    calls.clear()
    _run("prototype", text_data)
    assert calls == []
    _run("coact", text_data, dataclasses.replace(P, inc_epochs=0, base_epochs=2))
    assert len(calls) == 1 and calls[0][1] == 2


def test_checkpoint_state_restores_every_tensor_that_training_can_change():
    from contrastkit.alignment.coact_runner import mutable_state

    trained = CoACTModel(tiny_bert(0), 5, CoACTConfig(ft_start_layer=-1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # what a session can change: LoRA, classifier, seen, top block of student and teacher
        for p in trained.lora_parameters() + trained.ft_parameters() + [trained.classifier.weight]:
            p.add_(torch.randn(p.shape, generator=g))
        for t, s in zip(*trained.teacher_pairs()):
            t.copy_(s)
    trained.seen[:3] = True
    fresh = CoACTModel(tiny_bert(0), 5, CoACTConfig(ft_start_layer=-1))
    fresh.load_state_dict({**fresh.state_dict(), **mutable_state(trained)})
    want = trained.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())
