"""DPO (sigmoid, hinge, IPO), ORPO and SimPO: pair objectives on sequence log-probs.

Batch contract (:func:`xtune.stages.data.pair_collate_fn`): ``input_ids``/``labels``/``attention_mask``
of 2B rows (B chosen, then B rejected) and ``index`` (B,). One unit is one pair: a step's loss is the
mean of the per-pair losses over the step's pairs, however split into micro-batches and ranks.
"""

from __future__ import annotations

import torch

from xtune.dataset.encode import IGNORE_INDEX
from xtune.errors import ConfigError, XtuneError
from xtune.registry import OBJECTIVES
from xtune.stages.base import Objective
from xtune.stages.losses import PREF_LOSSES, dpo_losses, orpo_odds_losses, simpo_losses


def logps_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sums of next-token log-probs over trained positions, and their counts.

    Args:
        logits: ``(rows, seq, vocab)``.
        labels: ``(rows, seq)``, unshifted, -100 where not trained.
        shifted: ``labels`` are already the next tokens (a sequence-parallel slice's ``shift_labels``).
    """
    shift_logits = logits.float() if shifted else logits[:, :-1, :].float()
    shift_labels = labels if shifted else labels[:, 1:]
    trained = shift_labels != IGNORE_INDEX
    log_probs = torch.log_softmax(shift_logits, dim=-1)
    token = torch.gather(log_probs, 2, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * trained).sum(-1), trained.sum(-1)


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row response log-prob sums and trained-token counts of a padded batch, one forward pass.

    A sequence-parallel slice (``shift_labels``) sums its part of every row, then the group's parts.
    """
    if "shift_labels" in batch:
        from xtune.model.sequence_parallel import sum_over_group

        logits = model.llm(**model.model_inputs(batch), use_cache=False).logits
        logps, counts = logps_from_logits(logits, batch["shift_labels"], shifted=True)
        return sum_over_group(logps), sum_over_group(counts)
    logits = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return logps_from_logits(logits, batch["labels"])


def _check_beta(beta: float, name: str) -> None:
    if not isinstance(beta, (int, float)) or beta <= 0:
        raise ConfigError(f"pref_beta must be a positive number for {name}, got {beta!r}.")


class PairObjective(Objective):
    """Shared by the pair stages: units are pairs, lengths are both sides' real tokens."""

    unit = "pairs"

    def units(self, batch: dict) -> int:
        return int(batch["index"].numel())

    def sample_lengths(self, batch: dict) -> list[int]:
        if "attention_mask" not in batch:  # a sequence-parallel slice: its real tokens
            return [int(n) for n in batch["num_tokens"].tolist()]
        return [int(n) for n in batch["attention_mask"].sum(1).tolist()]

    def reference_logps(self, model, batch: dict) -> torch.Tensor:
        """``(B, 2)``: chosen and rejected log-prob sums."""
        logps, _ = sequence_logps(model, batch)
        pairs = logps.numel() // 2
        return torch.stack([logps[:pairs], logps[pairs:]], dim=1)

    def _reference(self, batch: dict, like: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            raise XtuneError(
                f"{self.name} needs reference log-probs, but none were computed: keep ReferenceLogpsHook in "
                "custom_hooks (configs/_base_/default_runtime.py lists it)."
            )
        return self.reference[batch["index"].cpu()].to(like.device, like.dtype)

    @staticmethod
    def _metrics(beta: float, chosen, rejected, reward_chosen, reward_rejected) -> dict[str, torch.Tensor]:
        return {
            "rewards/chosen": reward_chosen.mean().detach(),
            "rewards/rejected": reward_rejected.mean().detach(),
            "rewards/accuracies": (reward_chosen > reward_rejected).float().mean().detach(),
            "rewards/margins": (reward_chosen - reward_rejected).mean().detach(),
            "logps/chosen": chosen.mean().detach(),
            "logps/rejected": rejected.mean().detach(),
        }


@OBJECTIVES.register_module(name="dpo")
class DPOObjective(PairObjective):
    """Direct preference optimisation against the initial model's log-probs.

    Args:
        pref_beta: β, the strength of the pull towards the reference (LLaMA-Factory's knob; default 0.1).
        pref_loss: ``sigmoid`` (DPO), ``hinge`` (SLiC) or ``ipo`` (on mean log-probs, as TRL).
        dpo_label_smoothing: ε of conservative DPO (sigmoid only), in [0, 0.5).
        pref_ftx: Weight of an added SFT loss: the chosen reply's mean token NLL.
    """

    name = "dpo"
    needs_reference = True

    def __init__(
        self,
        pref_beta: float = 0.1,
        pref_loss: str = "sigmoid",
        dpo_label_smoothing: float = 0.0,
        pref_ftx: float = 0.0,
    ) -> None:
        super().__init__()
        _check_beta(pref_beta, "dpo")
        if pref_loss not in PREF_LOSSES:
            raise ConfigError(f"pref_loss must be one of {PREF_LOSSES}, got {pref_loss!r}.")
        if not 0 <= dpo_label_smoothing < 0.5:
            raise ConfigError(f"dpo_label_smoothing must be in [0, 0.5), got {dpo_label_smoothing!r}.")
        self.beta, self.loss_type = float(pref_beta), pref_loss
        self.label_smoothing, self.ftx = float(dpo_label_smoothing), float(pref_ftx)

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        logps, counts = sequence_logps(model, batch)
        pairs = logps.numel() // 2
        reference = self._reference(batch, logps)
        chosen, rejected = logps[:pairs], logps[pairs:]
        ref_chosen, ref_rejected = reference[:, 0], reference[:, 1]
        if self.loss_type == "ipo":  # IPO compares mean log-probs (TRL, LLaMA-Factory)
            lengths = counts.clamp(min=1).to(logps.dtype)
            chosen, rejected = chosen / lengths[:pairs], rejected / lengths[pairs:]
            ref_chosen, ref_rejected = ref_chosen / lengths[:pairs], ref_rejected / lengths[pairs:]
        losses = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type, self.label_smoothing)
        if self.ftx:
            losses = losses + self.ftx * (-logps[:pairs] / counts[:pairs].clamp(min=1))
        out = {"loss": self._scale(losses.sum(), pairs, loss_scale)}
        reward_chosen = self.beta * (chosen - ref_chosen)
        reward_rejected = self.beta * (rejected - ref_rejected)
        out.update(self._metrics(self.beta, chosen, rejected, reward_chosen, reward_rejected))
        return out


@OBJECTIVES.register_module(name="orpo")
class ORPOObjective(PairObjective):
    """Odds-ratio preference optimisation: chosen NLL + β x odds-ratio loss; no reference model.

    Args:
        pref_beta: λ, the weight of the odds-ratio term (LLaMA-Factory's knob; default 0.1).
    """

    name = "orpo"

    def __init__(self, pref_beta: float = 0.1) -> None:
        super().__init__()
        _check_beta(pref_beta, "orpo")
        self.beta = float(pref_beta)

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        logps, counts = sequence_logps(model, batch)
        pairs = logps.numel() // 2
        means = logps / counts.clamp(min=1)
        chosen, rejected = means[:pairs], means[pairs:]
        odds = orpo_odds_losses(chosen, rejected)
        losses = -chosen + self.beta * odds
        out = {"loss": self._scale(losses.sum(), pairs, loss_scale)}
        out.update(self._metrics(self.beta, chosen, rejected, self.beta * chosen, self.beta * rejected))
        out["odds_ratio_loss"] = odds.mean().detach()  # logged; not a loss term of its own
        return out


@OBJECTIVES.register_module(name="simpo")
class SimPOObjective(PairObjective):
    """Simple preference optimisation: length-normalised margin with a target gap; no reference.

    Args:
        pref_beta: β (LLaMA-Factory's default 0.1; the SimPO paper uses 2-10).
        simpo_gamma: γ, the target reward margin (default 0.5).
        dpo_label_smoothing: ε as in conservative DPO.
        pref_ftx: Weight of an added SFT loss on the chosen reply (mean token NLL).
    """

    name = "simpo"

    def __init__(
        self, pref_beta: float = 0.1, simpo_gamma: float = 0.5, dpo_label_smoothing: float = 0.0, pref_ftx: float = 0.0
    ) -> None:
        super().__init__()
        _check_beta(pref_beta, "simpo")
        self.beta, self.gamma = float(pref_beta), float(simpo_gamma)
        self.label_smoothing, self.ftx = float(dpo_label_smoothing), float(pref_ftx)

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        logps, counts = sequence_logps(model, batch)
        pairs = logps.numel() // 2
        means = logps / counts.clamp(min=1)
        chosen, rejected = means[:pairs], means[pairs:]
        losses = simpo_losses(chosen, rejected, self.beta, self.gamma, self.label_smoothing)
        if self.ftx:
            losses = losses - self.ftx * chosen
        out = {"loss": self._scale(losses.sum(), pairs, loss_scale)}
        out.update(self._metrics(self.beta, chosen, rejected, self.beta * chosen, self.beta * rejected))
        return out
