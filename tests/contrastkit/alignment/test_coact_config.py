"""CoACT / protocol configs: defaults from the authors' code, range edges, and the class count."""

from __future__ import annotations

import pytest

from contrastkit.alignment.coact_config import CoACTConfig, ProtocolConfig
from contrastkit.errors import UsageError


def test_defaults_follow_the_authors_code():
    c = CoACTConfig()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (16, 16, 0.1)
    assert (c.ce_weight, c.supcon_weight, c.consistency_weight) == (1.0, 1.0, 1.0)
    assert c.temperature == 0.07 and c.ema_momentum == 0.999
    assert c.ft_start_layer == -1 and c.ft_start_epoch == 0
    assert c.incft_layers == "classifier+pet" and c.pooling == "auto"
    assert c.contrastive and c.controlled_ft and c.consistency and c.teacher_dropout
    assert c.token_mask_prob == 0.0 and c.lora_target_modules is None and c.lora_blocks is None
    p = ProtocolConfig()
    assert (p.base_classes, p.ways, p.shots, p.sessions) == (60, 10, 5, 9)
    assert p.weight_decay == 5e-4 and p.base_shots is None and p.test_per_class is None


@pytest.mark.parametrize("kwargs", [
    {"lora_dropout": 1.0}, {"lora_dropout": -0.1}, {"temperature": 0.0}, {"temperature": -1.0},
    {"ema_momentum": 1.5}, {"ema_momentum": -0.1}, {"token_mask_prob": 1.0}, {"lora_r": 0},
    {"encoder_lr_factor": -0.1}, {"inc_lr_factor": -1.0}, {"ft_start_epoch": -1}, {"ce_weight": -1.0},
    {"supcon_weight": -0.5}, {"consistency_weight": -2.0}, {"incft_layers": "lora"}, {"pooling": "max"},
    {"lora_target_modules": []},
])
def test_coact_config_refuses(kwargs):
    with pytest.raises(UsageError):
        CoACTConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"lora_dropout": 0.0}, {"lora_dropout": 0.99}, {"ema_momentum": 1.0}, {"ema_momentum": 0.0},
    {"temperature": 1e-4}, {"token_mask_prob": 0.0}, {"token_mask_prob": 0.5}, {"encoder_lr_factor": 0.0},
    {"inc_lr_factor": 0.0}, {"ce_weight": 0.0}, {"lora_target_modules": ["query"]},
    {"incft_layers": "pet"}, {"incft_layers": "classifier"}, {"pooling": "cls"}, {"pooling": "pooler"},
])
def test_coact_config_accepts_edges(kwargs):
    CoACTConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"base_classes": 0}, {"ways": 0}, {"shots": 0}, {"batch_size": 0}, {"eval_batch_size": 0}, {"max_length": 0},
    {"sessions": -1}, {"base_epochs": -1}, {"inc_epochs": -1}, {"base_shots": 0}, {"test_per_class": 0},
    {"learning_rate": 0.0}, {"learning_rate": -0.1}, {"weight_decay": -1e-4},
])
def test_protocol_config_refuses(kwargs):
    with pytest.raises(UsageError):
        ProtocolConfig(**kwargs)


def test_protocol_config_edges_and_total_classes():
    p = ProtocolConfig(base_classes=4, ways=3, shots=2, sessions=5)
    assert p.total_classes == 4 + 3 * 5  # ways, not shots, per session
    assert ProtocolConfig(base_classes=7, ways=2, shots=9, sessions=0, base_epochs=0, inc_epochs=0).total_classes == 7
    ProtocolConfig(weight_decay=0.0, base_shots=1, test_per_class=1, learning_rate=1e-6)
