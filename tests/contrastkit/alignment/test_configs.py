"""The trainer configs (configs.py): every guard that turns a trl option our loss path ignores, or an out-of-range
method knob, into a UsageError before any model is loaded; the documented defaults; the edge values that are
valid and must stay accepted."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from contrastkit.alignment.configs import (  # noqa: E402
    DEFAULT_BETTER_TEMPLATE,
    DEFAULT_WORSE_TEMPLATE,
    ContrastDPOConfig,
    HyPOConfig,
    TREGConfig,
)
from contrastkit.errors import UsageError  # noqa: E402

ALL = [ContrastDPOConfig, HyPOConfig, TREGConfig]


def build(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad, match", [
    ({"beta": 0.0}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"loss": "hingee"}, "Did you mean 'hinge'"),
    ({"use_weighting": True}, "use_weighting"),
    ({"ld_alpha": 0.5}, "ld_alpha"),
    ({"f_divergence_type": "js_divergence"}, "f_divergence_type"),
    ({"loss_weights": [0.5]}, "loss_weights"),
    ({"loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0, 1.0]}, "loss_type"),
    ({"max_length": 1}, "max_length"),
])
def test_every_trainer_config_rejects_what_the_loss_path_ignores(tmp_path, cls, bad, match):
    with pytest.raises(UsageError, match=match):
        build(cls, tmp_path, **bad)


@pytest.mark.parametrize("cls", ALL)
def test_valid_edge_values_are_accepted(tmp_path, cls):
    cfg = build(cls, tmp_path, beta=1e-6, max_length=2, loss="hinge", loss_type="sigmoid", loss_weights=[1.0])
    assert cfg.loss == "hinge" and cfg.beta == 1e-6


@pytest.mark.parametrize("bad, match", [
    ({"hypo_lambda": -1e-3}, "hypo_lambda"),
    ({"hypo_temperature": 0.0}, "hypo_temperature"),
    ({"hypo_top_p": 0.0}, "hypo_top_p"),
    ({"hypo_top_p": 1.01}, "hypo_top_p"),
    ({"hypo_max_new_tokens": 0}, "hypo_max_new_tokens"),
    ({"hypo_num_samples": 1}, "hypo_num_samples"),
    ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
])
def test_hypo_config_guards(tmp_path, bad, match):
    with pytest.raises(UsageError, match=match):
        build(HyPOConfig, tmp_path, **bad)


def test_hypo_config_defaults_and_edges(tmp_path):
    cfg = build(HyPOConfig, tmp_path)
    assert (cfg.loss, cfg.hypo_lambda, cfg.hypo_num_samples, cfg.hypo_max_new_tokens) == ("dpo", 0.1, 2, 64)
    assert (cfg.hypo_temperature, cfg.hypo_top_p, cfg.hypo_eval_kl, cfg.hypo_sampler) == (1.0, 1.0, True, "hf")
    assert (cfg.hypo_sync_every, cfg.hypo_allow_off_policy) == (1, False)
    edge = build(HyPOConfig, tmp_path, hypo_lambda=0.0, hypo_num_samples=2, hypo_max_new_tokens=1, hypo_top_p=1.0,
                 hypo_temperature=1e-3)
    assert edge.hypo_num_samples == 2 and edge.hypo_lambda == 0.0


@pytest.mark.parametrize("bad, match", [
    ({"treg_alpha": -0.1}, "treg_alpha"),
    ({"treg_better_template": "no placeholder"}, "treg_better_template"),
    ({"treg_worse_template": "no placeholder"}, "treg_worse_template"),
    ({"treg_token_reduction": "max"}, "treg_token_reduction"),
    ({"treg_rewards": "sometimes"}, "treg_rewards"),
    ({"treg_reward_batch_size": 0}, "treg_reward_batch_size"),
    ({"truncation_mode": "keep_middle"}, "truncation_mode"),
    ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
])
def test_treg_config_guards(tmp_path, bad, match):
    with pytest.raises(UsageError, match=match):
        build(TREGConfig, tmp_path, **bad)


def test_treg_config_defaults_and_edges(tmp_path):
    cfg = build(TREGConfig, tmp_path)
    assert (cfg.loss, cfg.treg_alpha, cfg.treg_token_reduction, cfg.treg_rewards) == ("dpo", 0.25, "sum", "lazy")
    assert cfg.treg_reward_batch_size == 4
    assert (cfg.treg_better_template, cfg.treg_worse_template) == (DEFAULT_BETTER_TEMPLATE, DEFAULT_WORSE_TEMPLATE)
    assert "{prompt}" in DEFAULT_BETTER_TEMPLATE and "{prompt}" in DEFAULT_WORSE_TEMPLATE
    edge = build(TREGConfig, tmp_path, treg_alpha=0.0, treg_token_reduction="mean", treg_rewards="eager",
                 treg_reward_batch_size=1, truncation_mode="keep_end")
    assert (edge.treg_alpha, edge.treg_token_reduction, edge.truncation_mode) == (0.0, "mean", "keep_end")


def test_contrast_dpo_config_default_loss_is_dpo(tmp_path):
    assert build(ContrastDPOConfig, tmp_path).loss == "dpo"
