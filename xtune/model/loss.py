"""Causal-LM loss as a sum over tokens, normalised by the caller.

Summing here and dividing by the trained-token count of the whole optimizer step (all micro-batches,
all ranks) makes accumulation, data parallelism and packing give the same gradients as one big batch.
"""

import torch
import torch.nn.functional as F

from xtune.dataset.encode import IGNORE_INDEX


def shifted_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over trained positions, and their count.

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)``, unshifted, -100 where not trained.
    """
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    loss_sum = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()
