"""The Runner for one process and plain data parallel (DDP) on CPU (gloo) or GPU (nccl, one device per rank).

Saving and resuming are :class:`~xtune.engine.checkpointing.CheckpointRunnerMixin`'s, shared with the
DeepSpeed runner; this runner names the file backend (one ``iter_N.pth`` written by rank 0) and adds
how xtune wraps a model in DDP and how ``load_from`` (weights only) is read.
"""

import torch
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from xtune.checkpoint.files import remove_path, write_failure
from xtune.engine.checkpointing import (
    CHECKPOINT_GLOBALS,
    CheckpointRunnerMixin,
    FileBackend,
    load_checkpoint_file,
    message_hub_from_plain,
    message_hub_to_plain,
    safe_loading,
)
from xtune.engine.console import QuietConsoleMixin
from xtune.registry import RUNNERS

# Older imports of these names from this module keep working.
__all__ = [
    "CHECKPOINT_GLOBALS",
    "XtuneRunner",
    "ddp_settings",
    "load_checkpoint_file",
    "message_hub_from_plain",
    "message_hub_to_plain",
    "remove_path",
    "safe_loading",
    "write_failure",
]


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


@RUNNERS.register_module()
class XtuneRunner(QuietConsoleMixin, CheckpointRunnerMixin, Runner):
    """mmengine's Runner with xtune's checkpoint path (file backend) and DDP on CPU or GPU."""

    checkpoint_backend = FileBackend()

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module):
        """mmengine's wrapping, with :func:`ddp_settings` as the default under several ranks."""
        if self.distributed and not is_model_wrapper(model):
            settings = ddp_settings(model)
            settings.update(model_wrapper_cfg or {})
            model_wrapper_cfg = settings
        return super().wrap_model(model_wrapper_cfg, model)

    def load_checkpoint(
        self, filename: str, map_location="cpu", strict: bool = False, revise_keys: list | None = None
    ) -> dict:
        """``load_from`` without resuming: the weights of a checkpoint file, read safely."""
        from mmengine.runner.checkpoint import _load_checkpoint_to_model

        checkpoint = load_checkpoint_file(filename, map_location=map_location)
        (checkpoint.get("meta") or {}).pop("config", None)  # data, never run (see CheckpointRunnerMixin.resume)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        revise_keys = revise_keys if revise_keys is not None else [(r"^module.", "")]
        checkpoint = _load_checkpoint_to_model(self.unwrapped_model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint
