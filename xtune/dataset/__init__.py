"""Data: formats into one conversation schema, templates, ids and labels, packing, batches."""

from xtune.dataset.collate import sft_collate_fn
from xtune.dataset.sft import SFTDataset

__all__ = ["SFTDataset", "sft_collate_fn"]
