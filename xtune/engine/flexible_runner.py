"""Training with DeepSpeed ZeRO: the strategy of the one runner (:class:`xtune.engine.runner.XtuneRunner`,
mmengine's FlexibleRunner) for ``--deepspeed``, mmengine's DeepSpeedStrategy made to keep xtune's promises.

- Saving and resuming are every run's (:mod:`xtune.engine.checkpointing`): the same meta, message
  hub, hooks, temporary name and rename; :class:`DeepSpeedBackend` only writes and reads the ZeRO state,
  a folder (``iter_N.pth/``) with every rank's shards.
- Resuming never unpickles arbitrary objects: DeepSpeed's checkpoint engine is replaced by one that
  loads with ``torch.load(weights_only=True)`` and an allow-list of the few classes DeepSpeed writes.
- ``load_from`` (weights only, no resume) loads the weights before DeepSpeed shards the model.
"""

import importlib
import json
import os.path as osp

from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from mmengine._strategy import BaseStrategy
from mmengine._strategy.deepspeed import DeepSpeedStrategy
from mmengine.registry import STRATEGIES

from xtune.convert.zero import DEEPSPEED_CHECKPOINT_GLOBALS, load_deepspeed_file
from xtune.engine.checkpointing import (
    CHECKPOINT_GLOBALS,
    CheckpointBackend,
    load_checkpoint_file,
)
from xtune.engine.strategies import XtuneStrategyMixin
from xtune.errors import CheckpointError


def deepspeed_checkpoint_globals() -> list:
    """DeepSpeed's own classes named in :data:`DEEPSPEED_CHECKPOINT_GLOBALS` (resuming needs the real
    loss scaler and stage enum back), plus what xtune's checkpoints allow."""
    found = []
    for name in DEEPSPEED_CHECKPOINT_GLOBALS:
        module, _, attribute = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: a file that names it is refused with a clear error
    return found + list(CHECKPOINT_GLOBALS)


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True`` and the allow-list.

    It replaces whatever engine the DeepSpeed config chose (custom writers included): DeepSpeed's
    own engines unpickle whatever a file holds (weights_only off).
    """

    def load(self, path: str, map_location=None):
        return load_deepspeed_file(path, allowed=deepspeed_checkpoint_globals(), map_location=map_location)


@STRATEGIES.register_module()
class XtuneDeepSpeedStrategy(XtuneStrategyMixin, DeepSpeedStrategy):
    """mmengine's DeepSpeedStrategy with safe checkpoint loading and weights-only ``load_from``.

    Args:
        config: The DeepSpeed config, filled by :func:`xtune.engine.deepspeed.resolve_deepspeed_config`.
        train_micro_batch_size_per_gpu: Set by the FlexibleRunner from the dataloader.
        exclude_frozen_parameters: Leave frozen weights out of checkpoints.
        inputs_to_half: See mmengine's DeepSpeedStrategy.
        kwargs: For mmengine's BaseStrategy (work dir, environment, logging).
    """

    def __init__(
        self,
        *,
        config: dict,
        train_micro_batch_size_per_gpu: int | None = None,
        exclude_frozen_parameters: bool = True,
        inputs_to_half: list | None = None,
        **kwargs,
    ) -> None:
        # mmengine's __init__ registers DeepSpeed's own optimizers, importing modules newer DeepSpeed
        # releases removed; xtune always hands DeepSpeed a torch optimizer, so that step is skipped.
        BaseStrategy.__init__(self, **kwargs)
        # Plain JSON data: DeepSpeed saves this dict in every checkpoint, and a ConfigDict is not loadable
        # with weights_only.
        self.config = json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config))
        if train_micro_batch_size_per_gpu is not None:
            self.config["train_micro_batch_size_per_gpu"] = train_micro_batch_size_per_gpu
        self.config.setdefault("gradient_accumulation_steps", 1)
        self.config.setdefault("steps_per_print", 10**13)  # DeepSpeed's own progress lines: off
        self._inputs_to_half = inputs_to_half
        self.exclude_frozen_parameters = exclude_frozen_parameters
        self.initial_weights: str | None = None

    def deepspeed_engine(self):
        """The DeepSpeed engine once the model is prepared, else None (the train loop asks)."""
        return getattr(self.model, "model", None) if self._prepared else None

    def _init_model_weights(self, model):
        model = super()._init_model_weights(model)
        if self.initial_weights:
            state = _read_weights(self.initial_weights)
            model.load_state_dict(state, strict=False)
            self.logger.info(f"loaded weights from {self.initial_weights} before sharding")
        return model

    def _wrap_model(self, model):
        wrapper = super()._wrap_model(model)
        wrapper.model.checkpoint_engine = SafeTorchCheckpointEngine(wrapper.model._config)
        return wrapper


def _read_weights(path: str) -> dict:
    if osp.isdir(path):
        from xtune.convert.zero import load_zero_checkpoint

        return load_zero_checkpoint(path)
    return load_checkpoint_file(path)["state_dict"]


class DeepSpeedBackend(CheckpointBackend):
    """A DeepSpeed folder (``iter_N.pth/``): every rank writes its ZeRO shards, the shared entries go in as
    DeepSpeed's client state; reading goes through the engine and :class:`SafeTorchCheckpointEngine`."""

    def write(self, runner, path: str, checkpoint: dict, save_optimizer: bool, save_param_scheduler: bool) -> None:
        runner.strategy.save_checkpoint(
            filename=path,
            save_optimizer=save_optimizer,
            save_param_scheduler=save_param_scheduler,
            extra_ckpt=checkpoint,
        )

    def read(self, runner, path: str, resume_optimizer: bool, resume_param_scheduler: bool, map_location) -> dict:
        from deepspeed.runtime.zero.utils import ZeRORuntimeException

        if not osp.isdir(path):
            raise CheckpointError(
                f"--resume {path}: a DeepSpeed run resumes from a checkpoint folder (iter_N.pth/) that a "
                "DeepSpeed run wrote. To start from a .pth file's weights, set load_from instead."
            )
        try:
            return runner.strategy.resume(
                path, resume_optimizer=resume_optimizer, resume_param_scheduler=resume_param_scheduler
            )
        except ZeRORuntimeException as exc:
            raise CheckpointError(
                f"cannot resume from {path}: {exc} Resume with the number of ranks it was saved with "
                "(NPROC_PER_NODE x NNODES), or convert it with `xtune convert pth_to_hf` and start anew."
            ) from None


XtuneDeepSpeedStrategy.checkpoint_backend = DeepSpeedBackend()


def __getattr__(name: str):
    # ``XtuneFlexibleRunner``: the deprecated name of the one runner, kept for old imports.
    if name == "XtuneFlexibleRunner":
        from xtune.engine.runner import XtuneRunner

        return XtuneRunner
    raise AttributeError(name)
