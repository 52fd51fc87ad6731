"""Per-example losses of every stage equal the papers' formulas, written here separately in scalar math."""

import math
import random

import pytest
import torch

from xtune.errors import ConfigError
from xtune.stages import build_objective, stage_names
from xtune.stages.losses import dpo_losses, kto_losses, orpo_odds_losses, reward_losses, simpo_losses


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _values(n: int, low: float, high: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(n)]


N = 16
PC, PR, RC, RR = (_values(N, -60, -5, seed) for seed in range(4))  # sequence log-prob sums


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_dpo_sigmoid_is_the_papers_loss(smoothing):
    beta = 0.1
    ours = dpo_losses(_t(PC), _t(PR), _t(RC), _t(RR), beta, "sigmoid", smoothing)
    for i in range(N):
        h = (PC[i] - PR[i]) - (RC[i] - RR[i])
        expected = -(1 - smoothing) * _logsig(beta * h) - smoothing * _logsig(-beta * h)
        assert float(ours[i]) == pytest.approx(expected, rel=1e-12)


def test_dpo_hinge_and_ipo_are_the_papers_losses():
    beta = 0.25
    hinge = dpo_losses(_t(PC), _t(PR), _t(RC), _t(RR), beta, "hinge")
    ipo = dpo_losses(_t(PC), _t(PR), _t(RC), _t(RR), beta, "ipo")
    for i in range(N):
        h = (PC[i] - PR[i]) - (RC[i] - RR[i])
        assert float(hinge[i]) == pytest.approx(max(0.0, 1 - beta * h), rel=1e-12, abs=1e-12)
        assert float(ipo[i]) == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-12)


def test_orpo_odds_ratio_and_simpo_are_the_papers_losses():
    mc, mr = _values(N, -3, -0.05, 5), _values(N, -3, -0.05, 6)  # mean log-probs, p in (0, 1)
    odds = orpo_odds_losses(_t(mc), _t(mr))
    simpo = simpo_losses(_t(mc), _t(mr), beta=2.0, gamma=0.5)
    for i in range(N):
        pc, pr = math.exp(mc[i]), math.exp(mr[i])
        log_odds_ratio = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
        assert float(odds[i]) == pytest.approx(-_logsig(log_odds_ratio), rel=1e-10)
        assert float(simpo[i]) == pytest.approx(-_logsig(2.0 * (mc[i] - mr[i]) - 0.5), rel=1e-12)


def test_kto_and_reward_losses_are_the_papers_losses():
    labels = [i % 3 != 0 for i in range(N)]
    kl = 0.7
    ours = kto_losses(_t(PC), _t(RC), torch.tensor(labels), torch.tensor(kl, dtype=torch.float64), 0.1, 1.5, 0.5)
    rewards = reward_losses(_t(PC), _t(PR))
    for i in range(N):
        ratio = PC[i] - RC[i]
        expected = 1.5 * (1 - _sig(0.1 * (ratio - kl))) if labels[i] else 0.5 * (1 - _sig(0.1 * (kl - ratio)))
        assert float(ours[i]) == pytest.approx(expected, rel=1e-12)
        assert float(rewards[i]) == pytest.approx(-_logsig(PC[i] - PR[i]), rel=1e-12)


def test_every_stage_is_registered_and_bad_knobs_are_config_errors():
    assert stage_names() == ["dpo", "kto", "orpo", "pt", "rm", "sft", "simpo"]
    with pytest.raises(ConfigError, match="pref_loss must be one of"):
        build_objective({"type": "dpo", "pref_loss": "sigmoidd"})
    with pytest.raises(ConfigError, match="pref_beta must be a positive number"):
        build_objective({"type": "orpo", "pref_beta": 0})
    with pytest.raises(ConfigError, match="objective.type must be one of"):
        build_objective({"type": "ppo"})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_objective({"type": "rm", "pref_beta": 0.1})
