"""Causal-LM loss as a sum over tokens, normalised by the caller.

Summing here and dividing by the trained-token count of the whole optimizer step (all micro-batches,
all ranks) makes accumulation, data parallelism and packing give the same gradients as one big batch.

Two ways to the same number:

- :func:`shifted_token_loss_sum` takes the model's logits, as transformers computes them.
- :func:`chunked_token_loss_sum` takes the last hidden states and the output layer's weight and never
  holds more than ``chunk_size`` rows of logits: at 8192 tokens and a 128k vocabulary the full fp32
  logits and their gradient are 8 GiB, a 1024-token chunk 0.5 GiB. Gradients are computed chunk by
  chunk during the forward pass (the loss is a scalar, so they only wait for its upstream factor).
"""

import torch
import torch.nn.functional as F

from xtune.dataset.encode import IGNORE_INDEX


def shifted_token_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over trained positions, and their count.

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)``, unshifted, -100 where not trained.
        shifted: ``labels`` are already the next tokens (``labels[i]`` is the target at position ``i``,
            as in a sequence-parallel slice, whose last position's target lies on the next rank).
    """
    cut = None if shifted else -1
    shift_logits = logits[:, :cut, :].reshape(-1, logits.size(-1)).float()
    shift_labels = (labels if shifted else labels[:, 1:]).reshape(-1)
    loss_sum = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()


def chunked_token_loss_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    softcap: float | None = None,
    shifted: bool = False,
    trained_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shifted_token_loss_sum` of ``hidden @ weight.T``, without materialising those logits.

    Args:
        hidden: ``(batch, seq, hidden)``, the decoder's last hidden states.
        weight: ``(vocab, hidden)``, the output layer's weight (no bias).
        labels: ``(batch, seq)``, unshifted, -100 where not trained.
        chunk_size: Token rows of logits computed at a time.
        softcap: Final logit soft-capping (``softcap * tanh(logits / softcap)``, Gemma 2), or None.
        shifted: ``labels`` are already the next tokens (see :func:`shifted_token_loss_sum`).
        trained_tokens: How many of ``labels``' targets are trained, when the caller counted them on the
            host (the training loop does, before the batch moves to the device). Then the trained rows are
            found without reading the labels back to the host, which would wait for the device to finish
            the forward pass before the loss and backward could be queued. None: read them back.

    Returns:
        The summed loss (fp32 scalar) and the number of trained tokens.
    """
    cut = None if shifted else -1
    shift_hidden = hidden[:, :cut, :].reshape(-1, hidden.size(-1))
    shift_labels = (labels if shifted else labels[:, 1:]).reshape(-1)
    trained = shift_labels != IGNORE_INDEX
    # Rows that train nothing need no logits at all: prompts are often half of every sample.
    rows = _trained_rows(trained, trained_tokens)
    loss_sum = _ChunkedLinearCrossEntropy.apply(
        shift_hidden.index_select(0, rows), weight, shift_labels.index_select(0, rows), chunk_size, softcap
    )
    return loss_sum, trained.sum()


def _trained_rows(trained: torch.Tensor, count: int | None) -> torch.Tensor:
    """The positions where ``trained`` is true, in order; with their ``count`` known, on the device alone.

    Raises:
        ValueError: ``count`` is negative.
        RuntimeError: ``count`` is not the number of trained positions (checked on the device, without
            waiting for it: at once on a CPU, as a device-side assertion on a GPU).
    """
    if count is None:
        return trained.nonzero().squeeze(1)  # the output's size depends on the values: a read back
    if count < 0:
        raise ValueError(f"trained_tokens must be a count of tokens (>= 0), got {count}")
    torch._assert_async(
        trained.sum() == count, f"trained_tokens={count} is not the number of trained targets in the labels"
    )
    # Positions past the last trained one would be filled with an out-of-range index, which index_select
    # refuses; the check above makes that unreachable.
    return torch.nonzero_static(trained, size=count, fill_value=trained.numel()).squeeze(1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``labels`` (every row trained)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, softcap):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        # Several chunks add their weight gradients up in fp32 (one big matmul would accumulate in fp32
        # too); that buffer, vocabulary x hidden x 4 bytes, is smaller than the full logits' T x vocabulary
        # x 16 bytes whenever T > hidden / 4. A single chunk needs no buffer.
        single = hidden.size(0) <= chunk_size
        grad_weight = None
        if want_weight and not single:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk_size):
            part = hidden[start : start + chunk_size]
            targets = labels[start : start + chunk_size]
            # The same casts as the plain path: logits in the matmul's dtype, loss in fp32.
            logits = (part @ weight.t()).float()
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            log_norm = torch.logsumexp(logits, dim=-1)
            loss_sum += (log_norm - logits.gather(1, targets.unsqueeze(1)).squeeze(1)).sum()
            if not (want_hidden or want_weight):
                continue
            # softmax in the logits' own buffer (no longer needed): one chunk-sized fp32 buffer at a time,
            # the same element-wise operations as out of place, so the same numbers
            grad_logits = logits.sub_(log_norm.unsqueeze(1)).exp_()
            grad_logits[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
            if softcap:
                grad_logits *= 1.0 - capped * capped
            grad_logits = grad_logits.to(part.dtype)
            if want_hidden:
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
            if want_weight and single:
                grad_weight = grad_logits.t() @ part
            elif want_weight:
                grad_weight += (grad_logits.t() @ part).float()
        if want_weight and grad_weight is None:  # no rows to train on
            grad_weight = torch.zeros_like(weight)
        ctx.save_for_backward(
            grad_hidden if want_hidden else None,
            grad_weight.to(weight.dtype) if want_weight else None,
        )
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Scale in fp32 like the plain path, whose logits' gradient carries the factor before casting.
        if grad_hidden is not None:
            grad_hidden = (grad_hidden.float() * grad_loss).to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight.float() * grad_loss).to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None
