"""Batches of samples or packed rows into tensors."""

import torch

from xtune.dataset.encode import IGNORE_INDEX
from xtune.registry import FUNCTIONS


@FUNCTIONS.register_module()
def sft_collate_fn(batch: list[dict], pad_token_id: int = 0, pad_to_multiple_of: int = 1) -> dict:
    """Pad a batch on the right.

    Unpacked items (``input_ids``, ``labels``) get an ``attention_mask``. Packed items also carry
    ``position_ids``; they get no ``attention_mask`` and padding forms a segment of its own with
    positions from 0. Every batch says where its segments (samples, padding tails) lie in
    ``cu_seq_lens``: the packing contract of :mod:`xtune.model.attention`.

    Returns:
        ``input_ids``, ``labels`` and ``attention_mask`` or ``position_ids``, as LongTensors;
        ``cu_seq_lens`` (int32) and ``num_tokens``, each row's count of real (non-pad) tokens.
    """
    longest = max(len(item["input_ids"]) for item in batch)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    packed = "position_ids" in batch[0]
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    extra = torch.zeros((len(batch), width), dtype=torch.long)
    bounds = [0]
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.as_tensor(item["input_ids"])
        labels[row, :n] = torch.as_tensor(item["labels"])
        if packed:
            positions = torch.as_tensor(item["position_ids"])
            extra[row, :n] = positions
            extra[row, n:] = torch.arange(width - n)
            starts = (positions == 0).nonzero().squeeze(1)
            bounds += (starts[1:] + row * width).tolist()  # starts[0] == 0 is the previous row's end
        else:
            extra[row, :n] = 1
        bounds += [row * width + n] if n < width else []
        bounds.append((row + 1) * width)
    out = {
        "input_ids": input_ids,
        "labels": labels,
        "num_tokens": torch.tensor([len(item["input_ids"]) for item in batch]),
        "cu_seq_lens": torch.tensor(bounds, dtype=torch.int32),
    }
    out["position_ids" if packed else "attention_mask"] = extra
    return out


@FUNCTIONS.register_module()
def vision_collate_fn(batch: list[dict], pad_token_id: int = 0, pad_to_multiple_of: int = 1) -> dict:
    """:func:`sft_collate_fn` plus ``vision``: each key of the items' ``vision`` dicts (``pixel_values``,
    Qwen's ``image_grid_thw``) concatenated on dim 0 in item order, which is the order of the image tokens
    in the batch's rows. Absent when no item has an image."""
    out = sft_collate_fn(batch, pad_token_id, pad_to_multiple_of)
    parts = [item["vision"] for item in batch if item.get("vision")]
    if parts:
        out["vision"] = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return out


def count_trained_tokens(labels: torch.Tensor) -> int:
    """Tokens that contribute to the loss once the model shifts labels by one."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
