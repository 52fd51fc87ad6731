"""Experiment trackers by one knob: ``report_to`` picks mmengine visualizer backends.

``scalars.json`` (mmengine's ``LocalVisBackend``) is always written; ``report_to`` adds trackers:
``tensorboard`` (the default; ``tensorboard`` is a dependency of xtune), ``wandb``, ``mlflow`` (mmengine's
own backends) and ``swanlab`` (SwanLab's mmengine backend), as a list or a comma-separated string;
``'none'`` adds nothing. Trackers other than TensorBoard are never dependencies: asking for one that is
not installed is an error that says what to install, before training starts.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mmengine.visualization import Visualizer

from xtune.errors import ConfigError
from xtune.registry import VISUALIZERS

# tracker -> (module it needs, backend config); swanlab's backend registers itself when imported.
TRACKERS: dict[str, tuple[str, dict[str, Any]]] = {
    "tensorboard": ("tensorboard", {"type": "TensorboardVisBackend"}),
    "wandb": ("wandb", {"type": "WandbVisBackend"}),
    "mlflow": ("mlflow", {"type": "MLflowVisBackend"}),
    "swanlab": ("swanlab", {"type": "SwanlabVisBackend"}),
}


def tracker_backends(report_to: Any) -> list[dict[str, Any]]:
    """mmengine backend configs for ``report_to``, after checking each tracker's package is installed."""
    if report_to is None:
        names: list[str] = []
    elif isinstance(report_to, str):
        names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    elif isinstance(report_to, (list, tuple)) and all(isinstance(n, str) for n in report_to):
        names = [n for n in report_to if n != "none"]
    else:
        raise ConfigError(f"report_to must be a tracker name, a list of them or 'none', got {report_to!r}.")
    backends = [{"type": "LocalVisBackend"}]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}. Valid: {', '.join(TRACKERS)}, or 'none'.")
        module, backend = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to={name!r} needs the {module} package: pip install {module}.")
        if name == "swanlab":
            # SwanLab ships its mmengine backend; importing it registers SwanlabVisBackend.
            importlib.import_module("swanlab.integration.mmengine")
        backends.append(dict(backend))
    return backends


@VISUALIZERS.register_module()
class TrackerVisualizer(Visualizer):
    """mmengine's Visualizer with its backends chosen by ``report_to``."""

    def __init__(self, name: str = "visualizer", report_to: Any = "tensorboard", **kwargs) -> None:
        super().__init__(name=name, vis_backends=tracker_backends(report_to), **kwargs)
