"""Training hooks."""

from xtune.engine.hooks.checkpoint import AtomicCheckpointHook
from xtune.engine.hooks.evaluate_chat import EvaluateChatHook
from xtune.engine.hooks.info import DatasetInfoHook, LossCurveHook
from xtune.engine.hooks.rng import RNGStateHook
from xtune.engine.hooks.save_hf import SaveHFHook
from xtune.engine.hooks.throughput import ThroughputHook
from xtune.engine.hooks.validation import ValidationHook

__all__ = [
    "AtomicCheckpointHook",
    "DatasetInfoHook",
    "EvaluateChatHook",
    "LossCurveHook",
    "RNGStateHook",
    "SaveHFHook",
    "ThroughputHook",
    "ValidationHook",
]
