"""Reference log-probs without a second model: one pass of the initial weights over the data.

Before the first step, every rank runs its share of the dataset (the same number of batches on each,
so ZeRO-3's gathers stay in step) through the model in eval mode without gradients, and the results
are summed over ranks into one ``(items, k)`` table indexed by dataset position. The table is saved in
every checkpoint and restored on resume (the weights are no longer the initial ones then). For LoRA-family
runs the initial weights are the base model (adapters start at zero), so the numbers equal a frozen copy
of the base, or of the full model for full/freeze runs.
"""

from __future__ import annotations

import contextlib
import math

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size, is_distributed
from mmengine.hooks import Hook
from mmengine.logging import print_log

from xtune.registry import HOOKS
from xtune.stages.base import objective_of


def _inner(model):
    while not hasattr(model, "objective"):
        model = getattr(model, "module", None) or model.model
    return model


def compute_reference(runner, objective) -> torch.Tensor:
    """The reference table of the runner's training data, computed with the current weights."""
    loader = runner.train_dataloader
    from xtune.model.sequence_parallel import unsharded

    # whole rows on every rank, also under sequence parallelism (each rank has its own share of the data here)
    dataset, collate = loader.dataset, unsharded(loader.collate_fn)
    batch_size = loader.batch_size or 1
    model = _inner(runner.model)
    rank, world = get_rank(), get_world_size()
    total = len(dataset)
    per_rank = math.ceil(total / world)
    mine = [(rank + world * i) for i in range(per_rank)]  # past the end: repeats, counted out below
    table, hits = None, torch.zeros(total)
    was_training = model.training
    model.eval()
    # The autocast training runs under (AMP wrappers); DeepSpeed's wrapper has none: its weights carry the dtype
    context = getattr(runner.optim_wrapper, "optim_context", None)
    with torch.no_grad(), context(model) if context else contextlib.nullcontext():
        for start in range(0, per_rank, batch_size):
            chunk = mine[start : start + batch_size]
            real = [i < total for i in chunk]
            batch = collate([dataset[i % total] for i in chunk])
            batch = model.data_preprocessor(batch, training=False)
            logps = objective.reference_logps(model, batch).float().cpu()
            if table is None:
                table = torch.zeros(total, logps.size(1))
            for position, (index, keep) in enumerate(zip(chunk, real)):
                if keep:
                    table[index] += logps[position]
                    hits[index] += 1
    model.train(was_training)
    table = table if table is not None else torch.zeros(total, 2)
    if is_distributed():
        device = next(model.parameters()).device
        table, hits = table.to(device), hits.to(device)
        all_reduce(table, op="sum")
        all_reduce(hits, op="sum")
        table, hits = table.cpu(), hits.cpu()
    return table / hits.clamp(min=1).unsqueeze(1)


@HOOKS.register_module()
class ReferenceLogpsHook(Hook):
    """Fills the objective's reference table before training (or from the resumed checkpoint) and saves
    it with every checkpoint. Does nothing for objectives without a reference (SFT, ORPO, SimPO, RM)."""

    priority = "HIGH"

    def __init__(self) -> None:
        self._loaded: torch.Tensor | None = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get("reference_logps")

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        objective = objective_of(runner.model)
        if objective.reference is not None:
            checkpoint["reference_logps"] = objective.reference

    def before_train(self, runner) -> None:
        objective = objective_of(runner.model)
        if not objective.needs_reference:
            return
        if self._loaded is not None:
            objective.reference = self._loaded
            print_log("reference log-probs: restored from the checkpoint", logger="current")
            return
        objective.reference = compute_reference(runner, objective)
        print_log(
            f"reference log-probs: computed for {objective.reference.size(0)} items with the initial weights",
            logger="current",
        )
