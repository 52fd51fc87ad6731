"""Supervised finetuning and pretraining: next-token cross-entropy averaged over trained tokens.

Batch contract (:func:`xtune.dataset.collate.sft_collate_fn`): ``input_ids``, ``labels`` (unshifted,
-100 where not trained), ``attention_mask`` or, for packed rows, ``position_ids`` (positions restart
at each sample), and ``num_tokens`` (real tokens per row). One unit is one trained token. Batches for
vision-language models may add ``vision``: the image processor's tensors, which the model's inputs carry
(:meth:`xtune.model.finetune.FinetuneModel.model_inputs`).
"""

from __future__ import annotations

import torch

from xtune.dataset.collate import count_trained_tokens
from xtune.dataset.encode import IGNORE_INDEX
from xtune.model.loss import chunked_token_loss_sum, shifted_token_loss_sum
from xtune.registry import OBJECTIVES
from xtune.stages.base import Objective


def packed_sample_lengths(batch: dict) -> list[int]:
    """The real samples' lengths in a collated batch: packed rows split where positions restart."""
    rows = batch["num_tokens"].reshape(-1).tolist()
    if "position_ids" not in batch or batch["position_ids"] is None:
        return [int(n) for n in rows]
    lengths = []
    for positions, real in zip(batch["position_ids"], rows, strict=True):
        # a sequence-parallel slice may begin inside a sample: its first token starts a piece too
        starts = sorted({0, *(positions[: int(real)] == 0).nonzero().squeeze(1).tolist()}) + [int(real)]
        lengths += [end - start for start, end in zip(starts, starts[1:], strict=False) if end > start]
    return lengths


@OBJECTIVES.register_module(name="sft")
class SFTObjective(Objective):
    """Next-token loss on the trained tokens; a step's loss is the mean over the step's trained tokens."""

    name = "sft"
    unit = "tokens"

    def units(self, batch: dict) -> int:
        if "shift_labels" in batch:  # a sequence-parallel slice: its targets, already shifted
            return int((batch["shift_labels"] != IGNORE_INDEX).sum())
        return count_trained_tokens(batch["labels"])

    def sample_lengths(self, batch: dict) -> list[int]:
        return packed_sample_lengths(batch)

    def compute(self, model, batch: dict, loss_scale: float | None) -> dict[str, torch.Tensor]:
        inputs = model.model_inputs(batch)  # the attention path the builder chose (packed rows: per sample)
        # sequence-parallel slices carry shift_labels: targets shifted before the row was cut
        shifted = "shift_labels" in batch
        labels = batch["shift_labels"] if shifted else batch["labels"]
        head = model._chunkable_head()  # the builder decides whether the chunked loss applies
        if head is not None:
            causal_lm = model.causal_lm()
            hidden = model.trunk()(**inputs, use_cache=False).last_hidden_state
            softcap = getattr(causal_lm.config.get_text_config(), "final_logit_softcapping", None)
            # units: the trained tokens the loop counted on the host, so the loss need not read them back
            loss_sum, count = chunked_token_loss_sum(
                hidden, head.weight, labels, model.loss_chunk_size, softcap, shifted, batch.get("units")
            )
        else:
            logits = model.llm(**inputs, use_cache=False).logits
            loss_sum, count = shifted_token_loss_sum(logits, labels, shifted=shifted)
        loss = self._scale(loss_sum, count, loss_scale)
        if shifted:  # a sequence-parallel slice: log (and check) the group's mean, train on the slice's own
            from xtune.model.sequence_parallel import group_mean_value

            loss = group_mean_value(loss)
        return {"loss": loss}


@OBJECTIVES.register_module(name="pt")
class PretrainObjective(SFTObjective):
    """Continued pretraining: the SFT loss on text where every token is trained (``data_format='text'``)."""

    name = "pt"
