"""Tokens per second per device, TFLOP/s and model-FLOPs utilisation, per iteration and for the run.

FLOPs count the work the model does for its real tokens, padding excluded: 6 x the parameters that
multiply each token for the forward and backward pass (only the experts a token is routed to in a
mixture of experts), plus causal attention within each sample; a vision-language model's tower and
projector per image patch and feature they process (:mod:`xtune.engine.flops` states the convention).
Recomputation under gradient checkpointing is not counted, as usual for model-FLOPs utilisation.
"""

import json
import logging
import time
from pathlib import Path

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from xtune.engine.flops import (  # noqa: F401  (the accounting's old home re-exports it)
    ModelFlops,
    attention_width,
    matmul_parameters,
    model_flops,
    training_flops,
)
from xtune.model.vision import vision_inputs
from xtune.registry import HOOKS
from xtune.stages.base import objective_of
from xtune.stages.sft import packed_sample_lengths as sample_lengths  # noqa: F401  (its old home)

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
    """Logs ``tokens_per_sec`` (real, non-pad tokens per device), ``tflops`` and ``mfu`` each iteration,
    and writes ``WORK_DIR/throughput.json`` at the end: wall-clock tokens/s over the iterations after
    the first ``warmup_iters`` (data loading and every hook included), TFLOP/s, MFU and peak GPU memory.

    Args:
        warmup_iters: Iterations left out of the run's summary (compilation, allocator warm-up).
    """

    priority = "BELOW_NORMAL"

    def __init__(self, warmup_iters: int = 2) -> None:
        self.warmup_iters = warmup_iters
        self._start = 0.0
        self._flops = ModelFlops(0, 0, 0)
        self._peak = None
        self._seen = 0
        self._summary_start: float | None = None
        self._summary_end = 0.0
        self._totals = {"iters": 0, "tokens": 0, "flops": 0.0}
        self._settings: dict = {}

    def before_train(self, runner) -> None:
        self._settings = speed_settings(runner)
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        causal_lm = model.causal_lm() if hasattr(model, "causal_lm") else None
        if causal_lm is not None:
            self._flops = model_flops(causal_lm)
            for note in self._flops.notes:  # once per run, not per iteration
                print_log(f"throughput: {note}", logger="current", level=logging.WARNING)
        self._peak = device_peak_flops()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        _synchronize()
        self._start = time.perf_counter()
        if self._summary_start is None and self.warmup_iters <= 0:
            self._summary_start = self._start

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        _synchronize()
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        lengths = objective_of(runner.model).sample_lengths(data_batch)
        tokens = sum(lengths)
        # the images the batch carries, as the model reads them (absent for text)
        flops = self._flops.batch_flops(
            lengths, vision_inputs(data_batch, None) if isinstance(data_batch, dict) else None
        )
        runner.message_hub.update_scalar("train/tokens_per_sec", tokens / elapsed)
        runner.message_hub.update_scalar("train/tflops", flops / elapsed / 1e12)
        if self._peak:
            runner.message_hub.update_scalar("train/mfu", flops / elapsed / self._peak)
        self._seen += 1
        if self._summary_start is None:
            if self._seen >= self.warmup_iters:  # the clock starts as the last warm-up iteration ends
                self._summary_start = now
            return
        self._totals["iters"] += 1
        self._totals["tokens"] += tokens
        self._totals["flops"] += flops
        self._summary_end = now

    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        seconds = (self._summary_end - self._summary_start) if self._totals["iters"] else 0.0
        summary = {
            "warmup_iters": self.warmup_iters,
            "iters": self._totals["iters"],
            "tokens": self._totals["tokens"],
            "seconds": seconds,
            "tokens_per_sec": self._totals["tokens"] / seconds if seconds else None,
            "tflops": self._totals["flops"] / seconds / 1e12 if seconds else None,
            "mfu": self._totals["flops"] / seconds / self._peak if seconds and self._peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "matmul_parameters": self._flops.text_parameters,
            "settings": self._settings,
        }
        if self._flops.notes:
            summary["flops_notes"] = list(self._flops.notes)
        Path(runner.work_dir, "throughput.json").write_text(json.dumps(summary, indent=2) + "\n")
        if seconds:
            line = f"throughput: {summary['tokens_per_sec']:,.0f} tokens/s per device, {summary['tflops']:.1f} TFLOP/s"
            if summary["mfu"] is not None:
                line += f", MFU {summary['mfu']:.1%}"
            if summary["peak_memory_gib"] is not None:
                line += f", peak memory {summary['peak_memory_gib']:.1f} GiB"
            print_log(line + f" (iterations after the first {self.warmup_iters})", logger="current")


def speed_settings(runner) -> dict:
    """What the measured run had switched on: attention, checkpointing, loss, optimizer, clipping.

    Recorded beside the numbers so that a comparison says what it compared (the settings ``auto``
    resolved to, not the config's words).
    """
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    settings: dict = {}
    causal_lm = model.causal_lm() if hasattr(model, "causal_lm") else None
    if causal_lm is not None:
        settings["attn_implementation"] = getattr(causal_lm.config.get_text_config(), "_attn_implementation", None)
        checkpointing = getattr(causal_lm, "is_activation_checkpointing", None)
        settings["gradient_checkpointing"] = bool(
            checkpointing if checkpointing is not None else causal_lm.is_gradient_checkpointing
        )
    if hasattr(model, "_chunkable_head"):
        settings["loss_chunk_size"] = model.loss_chunk_size if model._chunkable_head() is not None else 0
    wrapper = getattr(runner, "optim_wrapper", None)
    optimizer = getattr(wrapper, "optimizer", None)
    if isinstance(optimizer, torch.optim.Optimizer):
        settings["optimizer"] = f"{type(optimizer).__name__} ({optimizer_kernel(optimizer)})"
        settings["clip_grad"] = getattr(wrapper, "clip_grad_kwargs", None) or None
    return settings


def optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    """``fused``, ``foreach`` or ``for-loop``: how torch runs this optimizer's update. Unset, torch picks
    foreach for CUDA parameters and the for-loop for CPU ones."""
    defaults = optimizer.defaults
    if defaults.get("fused"):
        return "fused"
    if defaults.get("foreach") is None:
        cuda = any(p.is_cuda for group in optimizer.param_groups for p in group["params"])
        return "foreach" if cuda else "for-loop"
    return "foreach" if defaults["foreach"] else "for-loop"


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
