"""Training with DeepSpeed ZeRO: mmengine's FlexibleRunner and DeepSpeedStrategy, made to keep
xtune's promises.

- Checkpoints are DeepSpeed folders (``iter_N.pth/``) written under a temporary name and renamed
  once every rank has finished, so a crash never leaves a half-written folder under a real name.
- Hooks see checkpoints as with the single-process runner: ``before_save_checkpoint`` and
  ``after_load_checkpoint`` run (mmengine's DeepSpeedStrategy skips them), so the message hub is
  stored as plain data and RNG states are saved and restored.
- Resuming never unpickles arbitrary objects: DeepSpeed's checkpoint engine is replaced by one that
  loads with ``torch.load(weights_only=True)`` and an allow-list of the few classes DeepSpeed writes.
- ``load_from`` (weights only, no resume) loads the weights before DeepSpeed shards the model.
"""

import importlib
import json
import os
import os.path as osp
import shutil

from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from mmengine._strategy import BaseStrategy
from mmengine._strategy.deepspeed import DeepSpeedStrategy
from mmengine.dist import barrier, is_main_process
from mmengine.registry import STRATEGIES
from mmengine.runner import FlexibleRunner

from xtune.convert.zero import DEEPSPEED_CHECKPOINT_GLOBALS, load_deepspeed_file
from xtune.engine.console import QuietConsoleMixin
from xtune.engine.runner import (
    CHECKPOINT_GLOBALS,
    PlainMessageHubMixin,
    load_checkpoint_file,
    remove_path,
    write_failure,
)
from xtune.errors import CheckpointError
from xtune.registry import RUNNERS


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
class XtuneDeepSpeedStrategy(DeepSpeedStrategy):
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

    def build_model(self, model):
        # The FlexibleRunner builds the dataset before the model, which may draw random numbers; reseed
        # so that random initialisations (LoRA's A matrices) are those of a run without DeepSpeed, whose
        # Runner builds the model right after seeding.
        if isinstance(model, dict) and self._randomness.get("seed") is not None:
            self._set_randomness(**self._randomness)
        return super().build_model(model)

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


@RUNNERS.register_module()
class XtuneFlexibleRunner(QuietConsoleMixin, PlainMessageHubMixin, FlexibleRunner):
    """mmengine's FlexibleRunner for DeepSpeed runs, with xtune's checkpoint handling."""

    @property
    def deepspeed_engine(self):
        """The DeepSpeed engine once the model is prepared, else None (the train loop asks)."""
        model = self.strategy.model if getattr(self.strategy, "_prepared", False) else None
        return getattr(model, "model", None) if model is not None else None

    def train(self):
        if self._load_from and not self._resume:
            self.strategy.initial_weights = self._load_from
            self._has_loaded = True
        return super().train()

    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args=None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict | None = None,
        by_epoch: bool = True,
        backend_args=None,
    ) -> None:
        """Write the DeepSpeed folder as ``<filename>.tmp`` on every rank, then rename it on rank 0."""
        # setdefault as in mmengine's Runner: a save outside the interval (on a stop signal) passes the
        # iteration it saves, which is the one to resume at (update made it one too many)
        meta = dict(meta or {})
        if by_epoch:
            meta.setdefault("epoch", self.epoch + 1)
            meta.setdefault("iter", self.iter)
        else:
            meta.setdefault("epoch", self.epoch)
            meta.setdefault("iter", self.iter + 1)
        meta.update(cfg=self.cfg.pretty_text, experiment_name=self.experiment_name)
        checkpoint = {"meta": meta, "message_hub": self.message_hub.state_dict()}
        self.call_hook("before_save_checkpoint", checkpoint=checkpoint)
        final = osp.join(out_dir, filename)
        tmp = f"{final}.tmp"
        if is_main_process() and osp.isdir(tmp):
            shutil.rmtree(tmp)  # left over from a crash during an earlier save
        barrier()
        try:
            self.strategy.save_checkpoint(
                filename=tmp,
                save_optimizer=save_optimizer,
                save_param_scheduler=save_param_scheduler,
                extra_ckpt=checkpoint,
            )
        except OSError as exc:
            remove_path(tmp)
            raise write_failure(final, exc) from None
        barrier()  # every rank's files are written
        if is_main_process():
            if osp.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
        barrier()

    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location="default",
    ) -> None:
        """Resume from a DeepSpeed checkpoint folder saved with the same number of ranks."""
        from deepspeed.runtime.zero.utils import ZeRORuntimeException

        if not osp.isdir(filename):
            raise CheckpointError(
                f"--resume {filename}: a DeepSpeed run resumes from a checkpoint folder (iter_N.pth/) that a "
                "DeepSpeed run wrote. To start from a .pth file's weights, set load_from instead."
            )
        try:
            checkpoint = self.strategy.resume(
                filename, resume_optimizer=resume_optimizer, resume_param_scheduler=resume_param_scheduler
            )
        except ZeRORuntimeException as exc:
            raise CheckpointError(
                f"cannot resume from {filename}: {exc} Resume with the number of ranks it was saved with "
                "(NPROC_PER_NODE x NNODES), or convert it with `xtune convert pth_to_hf` and start anew."
            ) from None
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        self.train_loop._epoch = checkpoint["meta"]["epoch"]
        self.train_loop._iter = checkpoint["meta"]["iter"]
        self.message_hub.load_state_dict(checkpoint["message_hub"])
        self.logger.info(f"resumed epoch: {self.epoch}, iter: {self.iter}")
