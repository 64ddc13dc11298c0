"""CoACT model and trainer wiring on a tiny random BERT (research notes 4.5 invariants 1-5)."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.nn.functional as F

from contrastkit.alignment.coact_config import CoACTConfig
from contrastkit.alignment.coact_data import Collator, Examples
from contrastkit.alignment.coact_model import CoACTModel
from contrastkit.alignment.coact_testing import synthetic_text, tiny_bert, tiny_word_tokenizer
from contrastkit.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(cfg=None, num_classes=4, **kw):
    return CoACTModel(tiny_bert(0), num_classes, cfg or CoACTConfig(), **kw)


def _batch(n=6, classes=3, seed=0):
    texts, labels = synthetic_text(classes, n // classes, seed)
    names = sorted(set(labels))
    y = torch.tensor([names.index(v) for v in labels])
    return Collator(tiny_word_tokenizer(), 16)([{"inputs": t, "labels": int(c)} for t, c in zip(texts, y)])


def _trainer(model, cfg, data, *, base_model=None, epochs=1, lr=0.5, callbacks=None, out=None):
    from transformers import PrinterCallback, TrainingArguments

    from contrastkit.alignment.coact_trainer import CoACTTrainer, EMATeacherCallback

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, num_train_epochs=epochs,
                             learning_rate=lr, lr_scheduler_type="constant", save_strategy="no", report_to=[],
                             logging_strategy="no", disable_tqdm=True, remove_unused_columns=False, use_cpu=True)
    cbs = [EMATeacherCallback()] + (callbacks or [])
    tr = CoACTTrainer(model=model, args=args, train_dataset=data, data_collator=Collator(tiny_word_tokenizer(), 16),
                      callbacks=cbs, coact=cfg, base_model=base_model)
    tr.remove_callback(PrinterCallback)
    return tr


def _examples(classes=3, per=4, seed=0):
    texts, labels = synthetic_text(classes, per, seed)
    names = sorted(set(labels))
    return Examples(texts, torch.tensor([names.index(v) for v in labels]))


def test_teacher_starts_equal_to_student_base_weights_and_ema_direction():
    m = _model()
    t, s = m.teacher_pairs()
    assert len(t) == len(list(m.teacher.parameters())) > 10
    assert all(torch.equal(a, b) for a, b in zip(t, s))
    with torch.no_grad():
        s[3].add_(1.0)  # the student's base weight moves; EMA must pull the teacher, never push the student
    before_s = s[3].clone()
    m.ema_update(0.5)
    assert torch.equal(s[3], before_s)
    assert torch.allclose(t[3], before_s - 0.5)
    m.ema_update(0.0)
    assert torch.equal(t[3], before_s)


def test_lora_step0_student_equals_teacher_embeddings():
    m = _model().eval()
    b = _batch()
    with torch.no_grad():
        assert torch.allclose(m.embed(b), m.embed(b, encoder=m.teacher), atol=1e-6)


def test_only_intended_params_trainable():
    m = _model(CoACTConfig(lora_blocks=[1], ft_start_layer=1))
    m.set_trainable(lora=True, classifier=True, ft=False)
    names = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    want = sorted([f"student.base_model.model.encoder.layer.1.attention.self.{proj}.lora_{ab}.default.weight"
                   for proj in ("query", "value") for ab in ("A", "B")] + ["classifier.weight"])
    assert names == want  # 2 projections x (A, B) x 1 block + classifier
    m.set_trainable(lora=False, classifier=False, ft=True)
    ft = [n for n, p in m.named_parameters() if p.requires_grad]
    assert ft and all(".layer.1." in n for n in ft) and not any("lora_" in n or "teacher" in n for n in ft)
    assert not any(p.requires_grad for p in m.teacher.parameters())


def test_prototypes_are_class_means_and_other_rows_unchanged():
    m = _model(num_classes=5)
    before = m.classifier.weight.detach().clone()
    emb = torch.randn(6, m.classifier.in_features)
    lab = torch.tensor([1, 3, 1, 3, 3, 1])
    m.set_prototypes(emb, lab)
    w = m.classifier.weight
    assert torch.allclose(w[1], emb[[0, 2, 5]].mean(0), atol=1e-6)
    assert torch.allclose(w[3], emb[[1, 3, 4]].mean(0), atol=1e-6)
    assert torch.equal(w[[0, 2, 4]], before[[0, 2, 4]])
    assert m.seen.tolist() == [False, True, False, True, False]
    probs = m.predict_logits(emb).softmax(-1)
    assert probs[:, [0, 2, 4]].eq(0).all()
    assert (m.predict_logits(emb).argmax(-1) == lab).all()  # identical support shots -> 100% when separable


def test_training_with_frozen_base_keeps_teacher_bit_identical_to_pretrained():
    pretrained = tiny_bert(0)
    m = _model(CoACTConfig(controlled_ft=False, ema_momentum=0.5))
    data = _examples()
    m.set_prototypes(torch.randn(3, 32), torch.arange(3))
    m.set_trainable(lora=True, classifier=True, ft=False)
    lora_before = [p.detach().clone() for p in m.lora_parameters()]
    with tempfile.TemporaryDirectory() as tmp:
        _trainer(m, m.cfg, data, epochs=2, out=tmp).train()
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, m.lora_parameters()))  # it did train
    ref = dict(pretrained.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in m.teacher.named_parameters())


def test_controlled_ft_trains_top_block_at_lower_lr_and_teacher_follows():
    from contrastkit.alignment.coact_trainer import ControlledFinetuneCallback

    cfg = CoACTConfig(ft_start_layer=-1, encoder_lr_factor=0.1, ema_momentum=0.0)
    m = _model(cfg)
    m.set_prototypes(torch.randn(3, 32), torch.arange(3))
    m.set_trainable(lora=True, classifier=True, ft=False)
    pre = copy.deepcopy(m.teacher)
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(m, cfg, _examples(), lr=0.5, callbacks=[ControlledFinetuneCallback(0)], out=tmp)
        tr.train()
    groups = tr.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.5, 0.05])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.ft_parameters()}
    pre_p = dict(pre.named_parameters())
    t_now = dict(m.teacher.named_parameters())
    moved = [n for n in t_now if not torch.equal(t_now[n], pre_p[n])]
    assert moved and all(".layer.1." in n for n in moved)  # block 0 and embeddings stay pre-trained
    for t, s in zip(*m.teacher_pairs()):  # m = 0: the teacher copies the student's base weights
        assert torch.equal(t, s)


def test_compute_loss_ce_masks_unseen_classes():
    cfg = CoACTConfig(contrastive=False, controlled_ft=False)
    m = _model(cfg, num_classes=5).eval()
    b = _batch()
    m.set_prototypes(torch.randn(3, 32), torch.arange(3))  # classes 3, 4 unseen (random rows)
    with torch.no_grad():
        m.classifier.weight[3:] = 50.0  # huge unseen rows: they would dominate an unmasked softmax
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(m, cfg, _examples(), out=tmp)
        with torch.no_grad():
            loss = tr.compute_loss(m, dict(b))
            logits = m.classifier(m.embed(b))[:, :3]
    want = -torch.log_softmax(logits, -1).gather(1, b["labels"][:, None]).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_compute_loss_supcon_student_vs_teacher():
    cfg = CoACTConfig(ce_weight=0.0, controlled_ft=False, teacher_dropout=False, temperature=0.5)
    m = _model(cfg).eval()
    with torch.no_grad():
        for p in m.lora_parameters():
            p.normal_(0, 0.5)  # student != teacher
    b = _batch()
    m.set_prototypes(torch.randn(3, 32), torch.arange(3))
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(m, cfg, _examples(), out=tmp)
        with torch.no_grad():
            loss = tr.compute_loss(m, dict(b))
            zq = F.normalize(m.embed(b), dim=-1)
            zk = F.normalize(m.embed(b, encoder=m.teacher), dim=-1)
    # reference: 2B points, view-major; positives = same label, self excluded; tau = base tau
    z = torch.cat([zq, zk])
    y = b["labels"].repeat(2)
    sim = z @ z.T / 0.5
    eye = torch.eye(len(z), dtype=torch.bool)
    lp = sim - torch.logsumexp(sim.masked_fill(eye, -1e9), 1, keepdim=True)
    pos = (y[:, None] == y[None]) & ~eye
    want = -((lp * pos).sum(1) / pos.sum(1)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_consistency_only_over_session0_classes():
    cfg = CoACTConfig(ce_weight=0.0, contrastive=False, controlled_ft=False)
    m = _model(cfg, num_classes=6).eval()
    m.set_prototypes(torch.randn(3, 32), torch.arange(3))
    base = m.frozen_copy()
    assert base.teacher is None and not any(p.requires_grad for p in base.parameters())
    m.set_prototypes(torch.randn(2, 32), torch.tensor([3, 4]))  # session 1 adds classes 3 and 4
    with torch.no_grad():
        m.classifier.weight[:3] += 0.3
        for p in m.lora_parameters():
            p.normal_(0, 0.3)
    b = _batch()
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(m, cfg, _examples(), base_model=base, out=tmp)
        with torch.no_grad():
            loss = tr.compute_loss(m, dict(b))
            cur = m.classifier(m.embed(b))
            old = base.classifier(base.embed(b))
    want = (cur[:, :3] - old[:, :3]).pow(2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() != pytest.approx((cur - old).pow(2).mean().item(), rel=1e-3)


def test_encoder_without_query_value_cannot_be_lora_wrapped():
    from contrastkit.testing import tiny_gpt2

    enc = tiny_gpt2().transformer
    with pytest.raises(UsageError, match="cannot be LoRA-wrapped"):
        CoACTModel(enc, 3, CoACTConfig())
    with pytest.raises(UsageError, match="out of range"):
        _model(CoACTConfig(lora_blocks=[5]))


def test_views_mask_only_the_student_view():
    cfg = CoACTConfig(token_mask_prob=0.5)
    m = _model(cfg)
    tok = tiny_word_tokenizer()
    b = _batch()
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(m, cfg, _examples(), out=tmp)
        tr.mask_token_id = tok.mask_token_id
        tr.special_ids = torch.tensor(tok.all_special_ids)
        v1, v2 = tr._views(m, {k: v for k, v in b.items() if k != "labels"})
    assert torch.equal(v2["input_ids"], b["input_ids"])
    masked = v1["input_ids"].eq(tok.mask_token_id)
    assert masked.any() and not masked[:, 0].any() and torch.equal(v1["attention_mask"], b["attention_mask"])
