"""Training stages: what is trained (the objective) apart from how the model is built.

Design (issue 12):

- **Model building** is one piece every stage uses: :class:`xtune.model.finetune.FinetuneModel` loads the
  Hugging Face model (the head the objective asks for: ``causal_lm`` or ``sequence_classification``),
  sets the dtype, applies the finetune type (full/freeze/lora/dora/qlora), gradient checkpointing and
  compilation, and owns checkpoint state. It knows no loss.
- **The objective** (:class:`xtune.stages.base.Objective`, registered by stage name in ``OBJECTIVES``) is
  the other: its batch contract (what its collate function produces), the forward and loss, how many
  *units* a micro-batch holds (trained tokens for SFT/PT, pairs for DPO/ORPO/SimPO/RM, completions for
  KTO), the real sequence lengths it ran (for throughput) and the metrics it logs. The model's
  ``forward(mode='loss')`` hands the batch to its objective.
- The loop normalises a step by ``objective.units(batch)`` summed over the step's micro-batches and ranks,
  so a step's loss is the mean over the step's units however they are split. Hooks ask the objective
  (lengths) or the dataset (``describe``) instead of reading batch keys.
- A stage = a module here (dataset + collate + objective) and a ``configs/_base_/stages/<stage>.py``
  base config; a leaf config picks it with ``_base_``. Nothing shared changes.
- Reference log-probs (DPO, KTO) come from one pass of the initial weights over the data before training
  (:class:`xtune.stages.reference.ReferenceLogpsHook`), kept in checkpoints: no second model in memory,
  works for every finetune type and under ZeRO-3 (all ranks run the pass in step).
- Later stages: online RL (PPO/GRPO) adds an objective whose ``units``/``compute`` work on rollouts it
  generates through ``model.llm.generate`` inside ``compute`` (or a ``before_step`` of its own hook), and
  a reward model built by the same :class:`FinetuneModel` with ``model_kind='sequence_classification'``;
  image inputs (LLaVA) add a dataset/collate producing ``pixel_values`` and an objective passing them on.
"""

# Importing the stage modules registers their objectives, datasets, collate functions and hooks.
from xtune.registry import OBJECTIVES
from xtune.stages import data, kto, preference, reference, rm, sft  # noqa: F401
from xtune.stages.base import Objective, build_objective, objective_of, stage_names

__all__ = ["OBJECTIVES", "Objective", "build_objective", "objective_of", "stage_names"]
