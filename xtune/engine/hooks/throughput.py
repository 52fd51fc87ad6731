"""Tokens per second per device, TFLOP/s and model-FLOPs utilisation."""

import time

import torch
from mmengine.hooks import Hook

from xtune.registry import HOOKS

# Dense bf16 peak FLOP/s of common training GPUs (vendor datasheets, without sparsity).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "H800": 989e12,
    "L40S": 362e12,
    "4090": 165e12,
    "A10": 125e12,
}


def device_peak_flops() -> float | None:
    """The current GPU's bf16 peak, when it is in :data:`PEAK_FLOPS`."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


@HOOKS.register_module()
class ThroughputHook(Hook):
    """Logs ``tokens_per_sec`` (real, non-pad tokens per device), ``tflops`` and ``mfu`` each iteration.

    FLOPs per token are 6 x parameters (forward and backward) plus attention's 12 x layers x hidden x
    the mean attended length (which packing and padding both bound by the sample lengths).
    """

    priority = "BELOW_NORMAL"

    def __init__(self) -> None:
        self._start = 0.0
        self._params = 0
        self._layers = 0
        self._hidden = 0
        self._peak = None

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        # ZeRO-3 leaves each rank a shard: ds_numel is a parameter's full size
        self._params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        config = getattr(getattr(model, "llm", None), "config", None)
        self._layers = getattr(config, "num_hidden_layers", 0) or 0
        self._hidden = getattr(config, "hidden_size", 0) or 0
        self._peak = device_peak_flops()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        tokens = int(data_batch["num_tokens"]) if "num_tokens" in data_batch else data_batch["input_ids"].numel()
        rows = data_batch["input_ids"].shape[0]
        mean_len = tokens / max(rows, 1)
        flops = tokens * (6 * self._params + 12 * self._layers * self._hidden * mean_len)
        runner.message_hub.update_scalar("train/tokens_per_sec", tokens / elapsed)
        runner.message_hub.update_scalar("train/tflops", flops / elapsed / 1e12)
        if self._peak:
            runner.message_hub.update_scalar("train/mfu", flops / elapsed / self._peak)
