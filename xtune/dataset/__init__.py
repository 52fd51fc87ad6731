"""Data: formats into one conversation schema, templates, ids and labels, packing, batches."""

from xtune.dataset.collate import sft_collate_fn, vision_collate_fn
from xtune.dataset.sampler import LengthGroupedSampler
from xtune.dataset.sft import SFTDataset
from xtune.dataset.vision import VisionSFTDataset

__all__ = ["LengthGroupedSampler", "SFTDataset", "VisionSFTDataset", "sft_collate_fn", "vision_collate_fn"]
