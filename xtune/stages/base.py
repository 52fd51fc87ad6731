"""The contract every training objective fulfils (see :mod:`xtune.stages`)."""

from __future__ import annotations

import torch

from xtune.registry import OBJECTIVES


class Objective:
    """What a stage trains.

    A subclass declares the head it needs (``model_kind``), what one *unit* is (the thing a step's loss
    is the mean over), and implements :meth:`units`, :meth:`sample_lengths` and :meth:`compute`. Its
    dataset and collate function produce the batches those methods read; nothing else reads them.

    Attributes:
        name: The stage name it is registered under.
        model_kind: ``causal_lm`` or ``sequence_classification`` (num_labels 1): the head the model
            builder loads.
        unit: What :meth:`units` counts, for messages (``tokens``, ``pairs``, ``completions``).
        needs_reference: Whether the reference log-probs hook must fill :attr:`reference` first.
    """

    name = ""
    model_kind = "causal_lm"
    unit = "tokens"
    needs_reference = False

    def __init__(self) -> None:
        self.reference: torch.Tensor | None = None

    def units(self, batch: dict) -> int:
        """How many units this micro-batch holds (its share of the step's normaliser)."""
        raise NotImplementedError

    def sample_lengths(self, batch: dict) -> list[int]:
        """The real (non-pad) length of every sequence the model runs on, for throughput."""
        raise NotImplementedError

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        """The micro-batch's loss (summed over its units, times ``loss_scale``; None: divided by its own
        units) under ``"loss"``, and detached metrics under other keys (logged as ``train/<key>``).

        In training, ``batch["units"]`` is :meth:`units` of the same batch, counted by the loop on the host
        before the batch moved to the device; absent elsewhere (validation)."""
        raise NotImplementedError

    def reference_logps(self, model, batch: dict) -> torch.Tensor:
        """Per-item reference log-probs ``(items, k)`` of a batch, for objectives with a reference."""
        raise NotImplementedError(f"the {self.name} objective has no reference model")

    def batch_indices(self, batch: dict) -> torch.Tensor:
        """Dataset indices of the batch's items (reference log-probs are looked up by them)."""
        return batch["index"]

    def _scale(self, loss_sum: torch.Tensor, count: int, loss_scale: float | None) -> torch.Tensor:
        return loss_sum * (loss_scale if loss_scale is not None else 1.0 / max(int(count), 1))


def stage_names() -> list[str]:
    """Every registered stage name (``sft``, ``pt``, ``dpo``, ...), for the CLI and the web board."""
    return sorted(OBJECTIVES.module_dict)


def build_objective(cfg: dict | Objective | None) -> Objective:
    """An objective from its config (``dict(type='dpo', pref_beta=0.1)``); None is SFT."""
    if isinstance(cfg, Objective):
        return cfg
    from xtune.errors import ConfigError

    cfg = dict(cfg or {"type": "sft"})
    name = cfg.get("type")
    if name not in OBJECTIVES.module_dict:
        raise ConfigError(f"model.objective.type must be one of {stage_names()}, got {name!r}.")
    try:
        return OBJECTIVES.build(cfg)
    except TypeError as exc:
        raise ConfigError(f"model.objective ({name}): {exc}") from None


def objective_of(model) -> Objective:
    """The objective of a model, through DDP / DeepSpeed wrappers."""
    seen = 0
    while not hasattr(model, "objective") and seen < 4:
        model = getattr(model, "module", None) or getattr(model, "model", None)
        seen += 1
    if model is None or not hasattr(model, "objective"):
        raise TypeError("the model has no training objective: build it with xtune.model.FinetuneModel")
    return model.objective
