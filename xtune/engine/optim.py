"""The optimizer wrapper picked by the training dtype, able to skip steps with non-finite losses."""

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, DefaultOptimWrapperConstructor, OptimWrapper

from xtune.hf.dtypes import LONG_NAMES, resolve_dtype
from xtune.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

FUSABLE = ("Adam", "AdamW")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class FusedAdamConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, with Adam and AdamW fused (one kernel for the whole update, on
    CUDA and CPU) unless the optimizer config sets ``fused`` itself. Other optimizers are left as they are,
    so swapping the optimizer type in a config needs no other change."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        optimizer = optim_wrapper_cfg.get("optimizer") or {}
        if optimizer.get("type") in FUSABLE and "fused" not in optimizer:
            optim_wrapper_cfg = {**optim_wrapper_cfg, "optimizer": {**optimizer, "fused": True}}
        super().__init__(optim_wrapper_cfg, paramwise_cfg)


class SkipNonFiniteMixin:
    """Drops an optimizer step if any loss of its micro-batches was NaN or infinite (when
    ``skip_nonfinite`` is set by the train loop's ``nonfinite='skip'``); the gradients are discarded.

    Under data parallel the ranks agree (one small all-reduce per step): a step is dropped on every
    rank if any rank's loss was bad, so the ranks' weights never part. ``steps`` and
    ``skipped_steps`` count the optimizer steps this run took and dropped.
    """

    skip_nonfinite = False
    _bad_step = False
    steps = 0
    skipped_steps = 0

    def update_params(self, loss: torch.Tensor, step_kwargs: dict | None = None, zero_kwargs: dict | None = None):
        if not self.skip_nonfinite:
            return super().update_params(loss, step_kwargs=step_kwargs, zero_kwargs=zero_kwargs)
        self._bad_step = self._bad_step or not bool(torch.isfinite(loss.detach()).all())
        self.backward(self.scale_loss(loss))
        if self.should_update():
            bad = torch.tensor(float(self._bad_step))
            if is_distributed():
                all_reduce(bad, op="sum")
            self.steps += 1
            if bad > 0:
                self.skipped_steps += 1
                print_log("skipped an optimizer step: a loss in it was not finite", logger="current", level=30)
            else:
                self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))
            self._bad_step = False


class XtuneOptimWrapper(SkipNonFiniteMixin, OptimWrapper):
    """mmengine's OptimWrapper that can skip non-finite steps."""


class XtuneAmpOptimWrapper(SkipNonFiniteMixin, AmpOptimWrapper):
    """mmengine's AmpOptimWrapper that can skip non-finite steps."""


@OPTIM_WRAPPERS.register_module()
def DtypeOptimWrapper(optimizer: torch.optim.Optimizer, dtype: str = "auto", **kwargs) -> OptimWrapper:  # noqa: N802
    """fp32: a plain OptimWrapper; bf16/fp16: an AmpOptimWrapper autocasting to that dtype (fp16 adds loss
    scaling). ``kwargs`` (``accumulative_counts``, ``clip_grad``) go to the wrapper; a ``clip_grad``
    whose ``max_norm`` is None turns clipping off."""
    if kwargs.get("clip_grad") is not None and kwargs["clip_grad"].get("max_norm") is None:
        kwargs["clip_grad"] = None  # max_norm = None turns clipping off
    resolved = resolve_dtype(dtype, knob="optim_wrapper.dtype")
    if resolved == "fp32":
        return XtuneOptimWrapper(optimizer=optimizer, **kwargs)
    amp_dtype = LONG_NAMES[resolved]
    loss_scale = "dynamic" if resolved == "fp16" else 1.0
    return XtuneAmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype, loss_scale=loss_scale, **kwargs)
