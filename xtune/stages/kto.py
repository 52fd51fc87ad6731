"""KTO: completions labelled desirable or undesirable, against the initial model's log-probs.

Batch contract (:func:`xtune.stages.data.kto_collate_fn`): 2B rows (B completions, then their B
mismatched completions for the KL estimate), ``kto_label`` (B,) and ``index`` (B,). One unit is one
completion. The KL estimate ``z`` is the mean over the micro-batch's mismatched completions (and over
ranks) of policy minus reference log-probs, clamped at 0 and detached, as in TRL.
"""

from __future__ import annotations

import torch
from mmengine.dist import all_reduce, is_distributed

from xtune.errors import ConfigError
from xtune.registry import OBJECTIVES
from xtune.stages.losses import kto_losses
from xtune.stages.preference import PairObjective, sequence_logps


@OBJECTIVES.register_module(name="kto")
class KTOObjective(PairObjective):
    """Kahneman-Tversky optimisation.

    Args:
        pref_beta: β (default 0.1).
        kto_chosen_weight: Weight of desirable completions' losses (LLaMA-Factory's knob; TRL's
            ``desirable_weight``).
        kto_rejected_weight: Weight of undesirable completions' losses (TRL's ``undesirable_weight``).
    """

    name = "kto"
    unit = "completions"
    needs_reference = True

    def __init__(
        self, pref_beta: float = 0.1, kto_chosen_weight: float = 1.0, kto_rejected_weight: float = 1.0
    ) -> None:
        super().__init__()
        if not isinstance(pref_beta, (int, float)) or pref_beta <= 0:
            raise ConfigError(f"pref_beta must be a positive number for kto, got {pref_beta!r}.")
        self.beta = float(pref_beta)
        self.chosen_weight, self.rejected_weight = float(kto_chosen_weight), float(kto_rejected_weight)

    def units(self, batch: dict) -> int:
        return int(batch["index"].numel())

    def reference_logps(self, model, batch: dict) -> torch.Tensor:
        """``(B, 2)``: the completion's and the mismatched completion's log-prob sums."""
        return super().reference_logps(model, batch)

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        logps, _ = sequence_logps(model, batch)
        items = logps.numel() // 2
        reference = self._reference(batch, logps)
        policy, policy_kl = logps[:items], logps[items:]
        kl_sum = (policy_kl - reference[:, 1]).sum().detach().reshape(1)
        kl_count = torch.tensor([float(items)], device=logps.device)
        if is_distributed():
            all_reduce(kl_sum, op="sum")
            all_reduce(kl_count, op="sum")
        kl = (kl_sum / kl_count).clamp(min=0).squeeze(0)
        desirable = batch["kto_label"].to(logps.device)
        losses = kto_losses(policy, reference[:, 0], desirable, kl, self.beta, self.chosen_weight, self.rejected_weight)
        rewards = self.beta * (policy - reference[:, 0]).detach()
        nan = torch.tensor(float("nan"), device=logps.device)
        out = {"loss": self._scale(losses.sum(), items, loss_scale), "kl": kl}
        out["rewards/chosen"] = rewards[desirable].mean() if desirable.any() else nan
        out["rewards/rejected"] = rewards[~desirable].mean() if (~desirable).any() else nan
        out["logps/chosen"] = policy[desirable].detach().mean() if desirable.any() else nan
        out["logps/rejected"] = policy[~desirable].detach().mean() if (~desirable).any() else nan
        return out
