"""One checkpoint path for every runner: save, resume and safe loading, plain or DeepSpeed.

Design
------
A checkpoint is one dict: ``meta`` (epoch, iter, config text, seed, data shape...), ``message_hub`` as
plain data, what hooks add (RNG states, reference log-probs) and the training state (model, optimizer,
schedulers). :class:`CheckpointRunnerMixin` owns everything about it that does not depend on where the
training state lives, in one place for both runners:

- saving: the meta, the message hub as plain lists and numbers, the data shape, the hooks'
  ``before_save_checkpoint``, writing under ``<name>.tmp`` and renaming once every rank is done
  (barriers), and the one ``cannot write checkpoint`` error when the disk is full;
- resuming: the backend's check of what was passed, the hooks' ``after_load_checkpoint`` (RNG states are
  applied by the loop after it has skipped the trained batches), the data-shape refusal, epoch/iter and
  message hub; the config text in ``meta`` is data and is never run (mmengine's resume runs it).

What differs is only how the training state is written and read, behind :class:`CheckpointBackend`:

- :class:`FileBackend` (one process or DDP): rank 0 writes one ``iter_N.pth`` file with
  ``state_dict``/``optimizer``/``param_schedulers`` beside the shared entries; reading is
  ``torch.load(weights_only=True)`` (:func:`load_checkpoint_file`).
- ``DeepSpeedBackend`` (in :mod:`xtune.engine.flexible_runner`): every rank writes its ZeRO shards into an
  ``iter_N.pth/`` folder with the shared entries as DeepSpeed's client state; reading goes through
  DeepSpeed's engine with a weights-only checkpoint engine.

The checkpoint hook (:class:`xtune.engine.hooks.checkpoint.AtomicCheckpointHook`) is shared as well: the
non-finite refusal, the ``last_checkpoint`` pointer (:mod:`xtune.checkpoint.files`), rotation and the
save on a stop signal. There is one runner, :class:`xtune.engine.runner.XtuneRunner` (mmengine's
FlexibleRunner); its strategy (one device, DDP or DeepSpeed, :mod:`xtune.engine.strategies`) names the
backend, and how ``load_from`` weights reach the model (loaded into the prepared model, or handed to
DeepSpeed before it shards).
"""

from __future__ import annotations

import os
import os.path as osp
import pickle
import time

import mmengine
import numpy as np
import torch
from mmengine.dist import barrier, get_world_size, is_main_process
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.utils import apply_to, get_git_hash

from xtune.checkpoint.files import remove_path, write_failure
from xtune.errors import CheckpointError, refused_pickle

# torch.load always runs with weights_only=True. mmengine's checkpoints pickle its HistoryBuffer objects
# (whose state holds bound methods, i.e. `getattr`) and numpy scalars, which weights_only rightly
# refuses. xtune writes the message hub as plain lists and numbers instead (message_hub_to_plain) and
# rebuilds the buffers on load, so nothing but tensors and containers needs allowing. Checkpoints
# written by plain mmengine are refused with a clear error.
CHECKPOINT_GLOBALS: list = []


def safe_loading():
    """A context in which ``torch.load`` (weights_only) accepts xtune's checkpoint contents."""
    return torch.serialization.safe_globals(CHECKPOINT_GLOBALS)


def load_checkpoint_file(path: str, map_location="cpu") -> dict:
    """Load an xtune checkpoint file safely, with a clear error for missing or damaged files.

    Raises:
        CheckpointError: The file is missing, truncated, or not a checkpoint.
    """
    if not osp.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}. Pass a file from the work dir, e.g. iter_100.pth.")
    try:
        with safe_loading():
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        what = refused_pickle(exc)
        if what:
            raise CheckpointError(
                f"{path} is not an xtune checkpoint: it holds {what}, which xtune does not load (loading it "
                "could run code). Pass an iter_*.pth that xtune train wrote."
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} ({first}). It may be truncated (an interrupted copy or save) "
            "or not an xtune checkpoint; use an earlier iter_*.pth."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an xtune/mmengine checkpoint: it has no 'state_dict'.")
    return checkpoint


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def message_hub_to_plain(state: dict) -> dict:
    """The message hub's state with every HistoryBuffer as a dict of lists (loadable with weights_only)."""
    scalars = {}
    for key, buffer in state.get("log_scalars", {}).items():
        logs, counts = buffer.data
        scalars[key] = {"log": _plain(logs), "count": _plain(counts), "max_length": buffer.max_length}
    return {**state, "log_scalars": scalars, "runtime_info": _plain(state.get("runtime_info", {}))}


def message_hub_from_plain(state: dict) -> dict:
    """Inverse of :func:`message_hub_to_plain`."""
    scalars = {}
    for key, value in state.get("log_scalars", {}).items():
        scalars[key] = (
            HistoryBuffer(value["log"], value["count"], value["max_length"]) if isinstance(value, dict) else value
        )
    return {**state, "log_scalars": scalars}


class CheckpointBackend:
    """How one kind of checkpoint writes and reads the training state (model, optimizer, schedulers).

    Everything else about a checkpoint is :class:`CheckpointRunnerMixin`'s.
    """

    def training_state(self, runner, save_optimizer: bool, save_param_scheduler: bool) -> dict:
        """Entries the checkpoint dict holds before the hooks see it (rank 0 of a plain run: the state)."""
        return {}

    def write(self, runner, path: str, checkpoint: dict, save_optimizer: bool, save_param_scheduler: bool) -> None:
        """Write the checkpoint at ``path`` (a temporary name; the caller renames it). Runs on every rank."""
        raise NotImplementedError

    def read(self, runner, path: str, resume_optimizer: bool, resume_param_scheduler: bool, map_location) -> dict:
        """Load the training state at ``path`` into the runner and return the checkpoint dict.

        Raises:
            CheckpointError: ``path`` is not this backend's kind of checkpoint, or cannot be read.
        """
        raise NotImplementedError


class FileBackend(CheckpointBackend):
    """One ``iter_N.pth`` file (``torch.save``), written by rank 0: the plain and DDP runs' checkpoints."""

    def training_state(self, runner, save_optimizer: bool, save_param_scheduler: bool) -> dict:
        from mmengine.runner.checkpoint import weights_to_cpu

        if not is_main_process():
            return {}  # only rank 0 writes: the other ranks need no copy of the weights
        state = {"state_dict": weights_to_cpu(runner.unwrapped_model.state_dict())}
        if save_optimizer:
            state["optimizer"] = apply_to(runner.optim_wrapper.state_dict(), lambda x: hasattr(x, "cpu"), _cpu)
        schedulers = runner.param_schedulers
        if save_param_scheduler and schedulers is not None:
            if isinstance(schedulers, dict):
                state["param_schedulers"] = {k: [s.state_dict() for s in v] for k, v in schedulers.items()}
            else:
                state["param_schedulers"] = [s.state_dict() for s in schedulers]
        return state

    def write(self, runner, path: str, checkpoint: dict, save_optimizer: bool, save_param_scheduler: bool) -> None:
        from mmengine.runner.checkpoint import save_checkpoint

        if is_main_process():
            save_checkpoint(checkpoint, path)

    def read(self, runner, path: str, resume_optimizer: bool, resume_param_scheduler: bool, map_location) -> dict:
        from mmengine.device import get_device
        from mmengine.runner.checkpoint import _load_checkpoint_to_model

        if osp.isdir(path):
            raise CheckpointError(
                f"--resume {path}: a DeepSpeed checkpoint folder resumes only under DeepSpeed: add --deepspeed "
                "with the preset it was trained with, or convert it with `xtune convert pth_to_hf`."
            )
        location = get_device() if map_location == "default" else map_location
        checkpoint = load_checkpoint_file(path, map_location=location)
        _load_checkpoint_to_model(runner.unwrapped_model, checkpoint, False, revise_keys=[(r"^module.", "")])
        seed = (checkpoint.get("meta") or {}).get("seed")
        current = runner._randomness_cfg.get("seed")
        if seed is not None and seed != current:  # as mmengine's resume: the checkpoint's seed wins
            if current is not None:
                runner.logger.warning(f"the checkpoint's seed {seed} differs from the config's {current}; using {seed}")
            runner._randomness_cfg.update(seed=seed)
            runner.strategy._set_randomness(**runner._randomness_cfg)
        # the strategy has built the optimizer wrapper and schedulers before the runner resumes
        if resume_optimizer and "optimizer" in checkpoint:
            runner.optim_wrapper.load_state_dict(checkpoint["optimizer"])
        if resume_param_scheduler and runner.param_schedulers is not None and "param_schedulers" in checkpoint:
            saved = checkpoint["param_schedulers"]
            if isinstance(runner.param_schedulers, dict):
                pairs = [(s, c) for k, v in runner.param_schedulers.items() for s, c in zip(v, saved[k])]
            else:
                pairs = list(zip(runner.param_schedulers, saved))
            for scheduler, state in pairs:
                scheduler.load_state_dict(state)
        return checkpoint


def _cpu(value):
    return value.cpu()


class CheckpointRunnerMixin:
    """For runners: the one save and resume path; ``checkpoint_backend`` says how the state is stored.

    Also stores the run's data shape and refuses a resume under another one (see :meth:`data_shape`).
    """

    checkpoint_backend: CheckpointBackend = FileBackend()
    allow_changed_data = False  # xtune train --allow-changed-data

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without its DDP (or DeepSpeed) wrapper."""
        return self.model.module if is_model_wrapper(self.model) else self.model

    # ------------------------------------------------------------------------------------------- data shape
    def data_shape(self) -> dict:
        """What decides which samples each step sees: a resumed run skips the micro-batches already
        trained, which is only the same run again if these are unchanged."""
        dataloader = self.train_loop.dataloader
        config = getattr(getattr(self, "strategy", None), "config", None)
        if isinstance(config, dict) and "gradient_accumulation_steps" in config:
            accumulate = config["gradient_accumulation_steps"]  # DeepSpeed
        else:
            accumulate = self.cfg.get("optim_wrapper", {}).get("accumulative_counts", 1)
        dataset = dataloader.dataset
        return {
            "batch_size": dataloader.batch_size,
            "accumulative_counts": int(accumulate),
            "ranks": get_world_size(),
            "samples": len(dataset),
            "data": dataset.cache_key() if hasattr(dataset, "cache_key") else None,
        }

    def _check_data_shape(self, checkpoint: dict) -> None:
        saved = (checkpoint.get("meta") or {}).get("data_shape")
        if not saved:
            return  # written before xtune recorded it
        now = self.data_shape()
        changed = [f"{key} {saved[key]!r} -> {now[key]!r}" for key in now if key in saved and saved[key] != now[key]]
        if not changed:
            return
        what = ", ".join(changed).replace("data ", "data (tokenized samples) ")
        if not self.allow_changed_data:
            raise CheckpointError(
                f"cannot resume: the checkpoint was trained with other data settings ({what}). Resuming would "
                "skip a different set of samples and change the schedule. Restore the settings, start a new "
                "--work-dir, or pass --allow-changed-data to resume anyway."
            )
        self.logger.warning(f"resuming with changed data settings ({what}), as --allow-changed-data asks")

    # ------------------------------------------------------------------------------------------- saving
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
        """Write ``<filename>.tmp`` (a file or a folder) on every rank that writes, then rename it on rank 0
        once all are done, so a crash never leaves a half-written checkpoint under a real name.

        Every rank must call this (the checkpoint hook does); all ranks return once it is in place.
        """
        # setdefault as in mmengine's Runner: a save outside the interval (on a stop signal) passes the
        # iteration it saves, which is the one to resume at (update would make it one too many)
        meta = dict(meta or {})
        meta.setdefault("epoch", self.epoch + 1 if by_epoch else self.epoch)
        meta.setdefault("iter", self.iter if by_epoch else self.iter + 1)
        meta.update(
            cfg=self.cfg.pretty_text,
            seed=self.seed,
            experiment_name=self.experiment_name,
            time=time.strftime("%Y%m%d_%H%M%S", time.localtime()),
            mmengine_version=mmengine.__version__ + get_git_hash(),
            data_shape=self.data_shape(),
        )
        dataset = self.train_dataloader.dataset
        if hasattr(dataset, "metainfo"):
            meta.update(dataset_meta=dataset.metainfo)
        hub = apply_to(self.message_hub.state_dict(), lambda x: hasattr(x, "cpu"), _cpu)
        checkpoint = {"meta": meta}
        checkpoint.update(self.checkpoint_backend.training_state(self, save_optimizer, save_param_scheduler))
        checkpoint["message_hub"] = message_hub_to_plain(hub)
        self.call_hook("before_save_checkpoint", checkpoint=checkpoint)

        final = osp.join(out_dir, filename)
        tmp = f"{final}.tmp"
        if is_main_process():
            remove_path(tmp)  # left over from a crash during an earlier save
        barrier()
        try:
            self.checkpoint_backend.write(self, tmp, checkpoint, save_optimizer, save_param_scheduler)
        except OSError as exc:
            remove_path(tmp)
            raise write_failure(final, exc) from None
        barrier()  # every rank's part is written
        if is_main_process() and osp.lexists(tmp):
            if osp.isdir(final):
                remove_path(final)  # a folder cannot be replaced by a rename
            os.replace(tmp, final)
        barrier()

    # ------------------------------------------------------------------------------------------- resuming
    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location="default",
    ) -> None:
        """Continue the run saved in ``filename``: training state, hooks' state, position and message hub.

        Raises:
            CheckpointError: The checkpoint is of the other kind, damaged, or from other data settings.
        """
        checkpoint = self.checkpoint_backend.read(
            self, filename, resume_optimizer, resume_param_scheduler, map_location
        )
        meta = checkpoint.get("meta") or {}
        # mmengine's resume runs meta['config'] as Python to compare GPU counts; a checkpoint is data and
        # nothing in it may run, so that text is dropped unread.
        meta.pop("config", None)
        checkpoint["message_hub"] = message_hub_from_plain(checkpoint["message_hub"])
        self._check_data_shape(checkpoint)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        self.train_loop._epoch = meta["epoch"]
        self.train_loop._iter = meta["iter"]
        dataset_meta = getattr(self.train_dataloader.dataset, "metainfo", None)
        if meta.get("dataset_meta", dataset_meta) != dataset_meta:
            self.logger.warning("the dataset of the resumed checkpoint differs from the current training dataset")
        self.message_hub.load_state_dict(checkpoint["message_hub"])
        self._has_loaded = True
        self.logger.info(f"resumed epoch: {self.epoch}, iter: {self.iter}")
