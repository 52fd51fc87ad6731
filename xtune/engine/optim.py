"""The optimizer wrapper picked by the training dtype."""

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from xtune.model.finetune import resolve_dtype
from xtune.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
def DtypeOptimWrapper(optimizer: torch.optim.Optimizer, dtype: str = "auto", **kwargs) -> OptimWrapper:  # noqa: N802
    """fp32: a plain OptimWrapper; bf16/fp16: an AmpOptimWrapper autocasting to that dtype (fp16 adds loss
    scaling). ``kwargs`` (``accumulative_counts``, ``clip_grad``) go to the wrapper; a ``clip_grad``
    whose ``max_norm`` is None turns clipping off."""
    if kwargs.get("clip_grad") is not None and kwargs["clip_grad"].get("max_norm") is None:
        kwargs["clip_grad"] = None  # max_norm = None turns clipping off
    resolved = resolve_dtype(dtype)
    if resolved == "fp32":
        return OptimWrapper(optimizer=optimizer, **kwargs)
    amp_dtype = "bfloat16" if resolved == "bf16" else "float16"
    loss_scale = "dynamic" if resolved == "fp16" else 1.0
    return AmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype, loss_scale=loss_scale, **kwargs)
