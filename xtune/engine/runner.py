"""The one runner of every ``xtune train`` run: one process, data parallel (DDP) or DeepSpeed ZeRO.

Design
------
:class:`XtuneRunner` is mmengine's FlexibleRunner; what differs between runs lives in its strategy:

- no ``strategy`` in the config, one process: :class:`~xtune.engine.strategies.XtuneSingleDeviceStrategy`;
- no ``strategy``, several ranks (``launcher`` other than ``none``):
  :class:`~xtune.engine.strategies.XtuneDDPStrategy`, which wraps as
  :func:`~xtune.engine.strategies.ddp_settings` says (``model_wrapper_cfg`` overrides single settings);
- ``--deepspeed`` sets ``strategy`` to :class:`~xtune.engine.flexible_runner.XtuneDeepSpeedStrategy`.

Saving and resuming are :class:`~xtune.engine.checkpointing.CheckpointRunnerMixin`'s; the strategy names the
backend that stores the training state (one ``iter_N.pth`` file, or a ZeRO folder). ``load_from`` (weights
only) is read safely in both: a file is loaded into the prepared model here, and the DeepSpeed strategy loads
it before it shards the model. ``XtuneFlexibleRunner`` is a deprecated name of this class.
"""

from __future__ import annotations

from mmengine.runner import FlexibleRunner

from xtune.checkpoint.files import remove_path, write_failure
from xtune.engine.checkpointing import (
    CHECKPOINT_GLOBALS,
    CheckpointBackend,
    CheckpointRunnerMixin,
    FileBackend,
    load_checkpoint_file,
    message_hub_from_plain,
    message_hub_to_plain,
    safe_loading,
)
from xtune.engine.strategies import ddp_settings
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


@RUNNERS.register_module()
@RUNNERS.register_module(name="XtuneFlexibleRunner")  # deprecated name, the same class
class XtuneRunner(CheckpointRunnerMixin, FlexibleRunner):
    """mmengine's FlexibleRunner with xtune's strategies and its one checkpoint path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Built now, right after seeding, as mmengine's Runner does (FlexibleRunner builds it in train(),
        # after the dataset): the same random initialisation and random state in every kind of run, and
        # ``runner.model`` is the model from the start. The strategy places and wraps it in train().
        self.model = self.strategy.build_model(self.model)

    @property
    def checkpoint_backend(self) -> CheckpointBackend:
        """How the strategy's training state is stored (see :mod:`xtune.engine.checkpointing`)."""
        return getattr(self.strategy, "checkpoint_backend", None) or FileBackend()

    @property
    def deepspeed_engine(self):
        """The DeepSpeed engine once a DeepSpeed run has prepared the model, else None (the loop asks)."""
        return self.strategy.deepspeed_engine() if hasattr(self.strategy, "deepspeed_engine") else None

    def build_strategy(self, strategy=None, launcher: str = "none", env_cfg: dict | None = None, **kwargs):
        """xtune's plain strategies where the config names none (mmengine would pick its own)."""
        if env_cfg is None:  # as mmengine's Runner (the FlexibleRunner needs one)
            env_cfg = {"dist_cfg": {"backend": "nccl"}}
        if strategy is None:
            if launcher == "none":
                strategy = {"type": "XtuneSingleDeviceStrategy"}
            else:
                strategy = {
                    "type": "XtuneDDPStrategy",
                    "model_wrapper": self.cfg.get("model_wrapper_cfg"),
                    "sync_bn": self.cfg.get("sync_bn"),
                }
        return super().build_strategy(strategy, launcher=launcher, env_cfg=env_cfg, **kwargs)

    def train(self):
        if self._load_from and not self._resume and hasattr(self.strategy, "initial_weights"):
            self.strategy.initial_weights = self._load_from  # DeepSpeed: loaded before sharding
            self._has_loaded = True
        return super().train()

    def load_or_resume(self) -> None:
        super().load_or_resume()
        # As mmengine's Runner: gradient accumulation counts from the resumed iteration (the strategy
        # counted from 0 before the checkpoint was read).
        if hasattr(self.optim_wrapper, "initialize_count_status"):
            self.optim_wrapper.initialize_count_status(self.model, self.train_loop.iter, self.train_loop.max_iters)

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
