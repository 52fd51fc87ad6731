"""Random-number-generator states in checkpoints, so that a resumed run draws what the original drew
(dropout masks, LoRA dropout). They are restored after the resumed loop has skipped the trained
batches, at the point where the original run saved them."""

import random

import numpy as np
import torch
from mmengine.hooks import Hook

from xtune.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Saves torch, CUDA, numpy and Python RNG states; the train loop calls :meth:`restore`."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._pending: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, python_state, python_gauss = random.getstate()
        checkpoint["rng_state"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(python_state), python_gauss],
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_state")

    def restore(self) -> None:
        """Apply the states of the loaded checkpoint, if any."""
        if not self._pending:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, python_state, python_gauss = state["python"]
        random.setstate((version, tuple(python_state), python_gauss))
