"""Reward modelling: a scalar head scores each side of a pair; pairwise loss ``-log σ(r_c - r_r)``.

The model builder loads ``AutoModelForSequenceClassification`` with ``num_labels=1`` for this stage
(``model_kind``), so the converted model is an ordinary HF reward model. A sequence's reward is the head's
output at its last real token (right padding), where HF's sequence classifier reads it as well.
Batch contract and units as the other pair stages (:func:`xtune.stages.data.pair_collate_fn`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xtune.errors import ConfigError
from xtune.registry import OBJECTIVES
from xtune.stages.losses import reward_losses
from xtune.stages.preference import PairObjective


def sequence_rewards(model, batch: dict) -> torch.Tensor:
    """One scalar per row: the score head at the row's last real token.

    Under sequence parallelism (a slice: ``shift_labels``) the rank whose slice holds a row's last real
    token reads the score there, the others give 0, and the group's sum (with a gradient, as the pair
    stages' log-probs) is the row's reward on every rank.
    """
    classifier = model.causal_lm()  # the transformers *ForSequenceClassification, under peft's wrapper
    decoder = getattr(classifier, classifier.base_model_prefix)
    sliced = "shift_labels" in batch
    if sliced:
        inputs, real = model.model_inputs(batch), batch["num_tokens"]  # real tokens: a prefix of the slice
    else:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        real = batch["attention_mask"].sum(1)  # right padding
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.size(0), device=hidden.device)
    scores = classifier.score(hidden[rows, (real - 1).clamp(min=0)]).squeeze(-1).float()
    if not sliced:
        return scores
    from xtune.model.sequence_parallel import sum_over_group

    return sum_over_group(torch.where(batch["ends_here"], scores, torch.zeros_like(scores)))


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


def _is_reward_dir(path: str | None) -> bool:
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return False
    for name, key in (("adapter_config.json", "task_type"), ("config.json", "architectures")):
        file = folder / name
        if file.is_file():
            value = json.loads(file.read_text()).get(key) or ""
            if "SEQ_CLS" in str(value) or "ForSequenceClassification" in str(value):
                return True
    return False


def refuse_reward_model(model: str | None, adapter: str | None = None, config: str | None = None) -> None:
    """``xtune chat`` on a reward model (an HF dir, an adapter, or an rm config) is a clear error.

    Raises:
        ConfigError: The model scores text instead of generating it.
    """
    is_rm = _is_reward_dir(model) or _is_reward_dir(adapter)
    if config and not is_rm:
        from xtune.config import load_config

        objective = (load_config(config).get("model") or {}).get("objective") or {}
        is_rm = isinstance(objective, dict) and objective.get("type") == "rm"
    if is_rm:
        raise ConfigError(
            f"{adapter or model or config} is a reward model (a scalar head, trained by the rm stage): it scores "
            "text and cannot chat. Load it with AutoModelForSequenceClassification, or chat with a policy model."
        )
