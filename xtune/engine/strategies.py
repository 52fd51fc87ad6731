"""The strategies of xtune's one runner for plain runs: one process, or data parallel (DDP).

:class:`~xtune.engine.runner.XtuneRunner` is mmengine's FlexibleRunner; the strategy says how the model is
built, placed and wrapped, and which checkpoint backend stores the training state
(:mod:`xtune.engine.checkpointing`). These two hold the plain runs' choices; the DeepSpeed one is
:class:`xtune.engine.flexible_runner.XtuneDeepSpeedStrategy`. All of them share
:class:`XtuneStrategyMixin`.
"""

from __future__ import annotations

import torch
from mmengine._strategy import DDPStrategy, SingleDeviceStrategy
from mmengine.model import is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, STRATEGIES

from xtune.engine.checkpointing import CheckpointBackend, FileBackend
from xtune.engine.console import quiet_console


def ddp_settings(model: torch.nn.Module) -> dict:
    """How xtune wraps a model in DistributedDataParallel (``model_wrapper_cfg`` in a config overrides it).

    - ``device_ids``: the rank's GPU, or None on CPU (DDP refuses device ids for CPU modules).
    - Frozen weights (the base model under LoRA/QLoRA, frozen layers) are left out of DDP altogether:
      no start-up broadcast and no gradient buckets for them. Every rank loads the same weights from
      disk, and trainable weights are created from the same seed and broadcast from rank 0 anyway.
    - ``find_unused_parameters=False``: every trainable weight of full, freeze, LoRA and DoRA
      finetuning takes part in each forward pass, so the per-step graph search it costs is not needed.
    - ``gradient_as_bucket_view``: gradients live in DDP's buckets instead of beside them (less memory).
    """
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    if frozen:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return {
        "type": "MMDistributedDataParallel",
        "device_ids": device_ids,
        "broadcast_buffers": False,
        "find_unused_parameters": False,
        "gradient_as_bucket_view": True,
    }


class XtuneStrategyMixin:
    """What every xtune strategy does: names its checkpoint backend, builds the model right after seeding
    and keeps the terminal quiet (:mod:`xtune.engine.console`)."""

    checkpoint_backend: CheckpointBackend = FileBackend()

    def build_logger(self, *args, **kwargs):
        return quiet_console(super().build_logger(*args, **kwargs))

    def build_model(self, model):
        # The FlexibleRunner builds the dataset before the model, which may draw random numbers; reseed
        # so that random initialisations (LoRA's A matrices) are those drawn right after seeding.
        if isinstance(model, dict) and self._randomness.get("seed") is not None:
            self._set_randomness(**self._randomness)
        return super().build_model(model)


@STRATEGIES.register_module()
class XtuneSingleDeviceStrategy(XtuneStrategyMixin, SingleDeviceStrategy):
    """One process: the model on the process's device; checkpoints are one ``iter_N.pth`` file."""


@STRATEGIES.register_module()
class XtuneDDPStrategy(XtuneStrategyMixin, DDPStrategy):
    """Data parallel on CPU (gloo) or GPU (nccl, one device per rank), wrapped as :func:`ddp_settings`
    says; ``model_wrapper`` (a config's ``model_wrapper_cfg``) overrides single settings."""

    def _wrap_model(self, model: torch.nn.Module):
        if is_model_wrapper(model):
            return model
        from mmengine.device import get_device

        model = self.convert_model(model.to(get_device()))
        settings = ddp_settings(model)
        settings.update(self.model_wrapper or {})
        return MODEL_WRAPPERS.build(settings, default_args={"module": model})
