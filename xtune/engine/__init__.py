"""Training engine: the runner, the loop and the hooks."""

from xtune.engine.console import XtuneLoggerHook
from xtune.engine.hooks import (
    AtomicCheckpointHook,
    DatasetInfoHook,
    EvaluateChatHook,
    LossCurveHook,
    RNGStateHook,
    ThroughputHook,
)
from xtune.engine.loop import TrainLoop
from xtune.engine.optim import DtypeOptimWrapper
from xtune.engine.runner import XtuneRunner
from xtune.engine.visualizer import TrackerVisualizer

__all__ = [
    "AtomicCheckpointHook",
    "DatasetInfoHook",
    "EvaluateChatHook",
    "LossCurveHook",
    "RNGStateHook",
    "ThroughputHook",
    "TrainLoop",
    "XtuneLoggerHook",
    "XtuneRunner",
    "TrackerVisualizer",
    "DtypeOptimWrapper",
]
