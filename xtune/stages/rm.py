"""Reward modelling: a scalar head scores each side of a pair; pairwise loss ``-log σ(r_c - r_r)``.

The model builder loads ``AutoModelForSequenceClassification`` with ``num_labels=1`` for this stage
(``model_kind``), so the converted model is an ordinary HF reward model. A sequence's reward is the head's
output at its last real token (right padding), where HF's sequence classifier reads it as well.
Batch contract and units as the other pair stages (:func:`xtune.stages.data.pair_collate_fn`).
"""

from __future__ import annotations

import torch

from xtune.registry import OBJECTIVES
from xtune.stages.losses import reward_losses
from xtune.stages.preference import PairObjective


def sequence_rewards(model, batch: dict) -> torch.Tensor:
    """One scalar per row: the score head at the row's last real token."""
    classifier = model.causal_lm()  # the transformers *ForSequenceClassification, under peft's wrapper
    decoder = getattr(classifier, classifier.base_model_prefix)
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    rows = torch.arange(hidden.size(0), device=hidden.device)
    return classifier.score(hidden[rows, last]).squeeze(-1).float()


@OBJECTIVES.register_module(name="rm")
class RewardObjective(PairObjective):
    """Bradley-Terry reward model training on preference pairs; logs accuracy and mean margin."""

    name = "rm"
    model_kind = "sequence_classification"

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        rewards = sequence_rewards(model, batch)
        pairs = rewards.numel() // 2
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        losses = reward_losses(chosen, rejected)
        return {
            "loss": self._scale(losses.sum(), pairs, loss_scale),
            "accuracy": (chosen > rejected).float().mean().detach(),
            "margin": (chosen - rejected).mean().detach(),
            "rewards/chosen": chosen.mean().detach(),
            "rewards/rejected": rejected.mean().detach(),
        }
