"""Checkpoint conversion: training checkpoints to Hugging Face folders, and adapter merging.

- :mod:`xtune.convert.checkpoint`: read any checkpoint kind and rebuild the trained model.
- :mod:`xtune.convert.pth_to_hf`: a checkpoint to a PEFT adapter or a full model folder.
- :mod:`xtune.convert.merge`: an adapter merged into its base model.
"""

from xtune.convert.checkpoint import FOLDER_READERS, FolderReader, load_trainable_state, read_checkpoint
from xtune.convert.merge import MergeResult, merge_adapter
from xtune.convert.pth_to_hf import pth_to_hf

__all__ = [
    "FOLDER_READERS",
    "FolderReader",
    "MergeResult",
    "load_trainable_state",
    "merge_adapter",
    "pth_to_hf",
    "read_checkpoint",
]
