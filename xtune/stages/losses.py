"""Per-example losses of the preference stages, as pure functions of sequence log-probs (or rewards).

Each returns one loss per pair (per completion for KTO); the objectives sum them and the loop divides by
the step's pairs. Formulas as in the papers and TRL / LLaMA-Factory:

- DPO (Rafailov et al. 2023), ``sigmoid``: ``-log σ(β h)(1-ε) - log σ(-β h) ε`` with
  ``h = (π_c - π_r) - (ref_c - ref_r)`` (sequence log-prob sums) and label smoothing ε (cDPO);
  ``hinge`` (SLiC): ``relu(1 - β h)``; ``ipo`` (Azar et al. 2023): ``(h - 1/(2β))²`` on mean log-probs.
- ORPO (Hong et al. 2024): ``-log σ(log odds(c) - log odds(r))`` on mean log-probs, odds = p / (1 - p);
  the objective adds the chosen reply's mean NLL and weighs the odds term by β.
- SimPO (Meng et al. 2024): ``-log σ(β (avg_c - avg_r) - γ)`` (label smoothing as DPO).
- KTO (Ethayarajh et al. 2024): desirable ``1 - σ(β (logratio - z))``, undesirable
  ``1 - σ(β (z - logratio))``, z the (detached, clamped ≥ 0) KL estimate; weighted per class.
- RM (Bradley-Terry): ``-log σ(r_c - r_r)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREF_LOSSES = ("sigmoid", "hinge", "ipo")


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO-family loss per pair (log-probs: sums, or means for ``ipo``)."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(f"pref_loss must be one of {PREF_LOSSES}, got {loss_type!r}")


def orpo_odds_losses(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor) -> torch.Tensor:
    """ORPO's odds-ratio term per pair, ``-log σ(log odds_c - log odds_r)`` (mean log-probs)."""
    log_odds = (mean_chosen - mean_rejected) - (
        torch.log1p(-torch.exp(mean_chosen)) - torch.log1p(-torch.exp(mean_rejected))
    )
    return -F.logsigmoid(log_odds)


def simpo_losses(
    mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """SimPO per pair (mean log-probs, target margin ``gamma``)."""
    logits = beta * (mean_chosen - mean_rejected) - gamma
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def kto_losses(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO per completion (sequence log-prob sums); ``kl`` the batch's KL estimate (detached, >= 0)."""
    logratio = policy - reference
    good = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    return torch.where(desirable, good, bad)


def reward_losses(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Pairwise Bradley-Terry loss per pair."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)
