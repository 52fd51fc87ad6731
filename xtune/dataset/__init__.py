"""Data: formats into one conversation schema, templates, ids and labels, packing, batches."""

from xtune.dataset.collate import sft_collate_fn
from xtune.dataset.sampler import LengthGroupedSampler
from xtune.dataset.sft import SFTDataset

__all__ = ["LengthGroupedSampler", "SFTDataset", "sft_collate_fn"]
