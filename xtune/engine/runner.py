"""The Runner: mmengine's, with atomic checkpoint writes, resume under ``weights_only=True`` and plain
data parallel (DDP) that works on CPU (gloo) and GPU (nccl, one device per rank).

Under DDP only rank 0 writes a checkpoint (mmengine's ``save_checkpoint`` is rank-0 only); it renames
its temporary file and every rank waits at a barrier, so no rank runs ahead of a checkpoint or exits
while rank 0 is still writing one.
"""

import contextlib
import os
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.dist import barrier, get_world_size, is_main_process
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from xtune.engine.console import QuietConsoleMixin
from xtune.errors import CheckpointError, refused_pickle
from xtune.registry import RUNNERS

# torch.load always runs with weights_only=True. mmengine's checkpoints pickle its HistoryBuffer objects
# (whose state holds bound methods, i.e. `getattr`) and numpy scalars, which weights_only rightly
# refuses. xtune writes the message hub as plain lists and numbers instead (see
# XtuneRunner.call_hook) and rebuilds the buffers on load, so nothing but tensors and containers
# needs allowing. Checkpoints written by plain mmengine are refused with a clear error.
CHECKPOINT_GLOBALS: list = []


def safe_loading():
    """A context in which ``torch.load`` (weights_only) accepts xtune's checkpoint contents."""
    return torch.serialization.safe_globals(CHECKPOINT_GLOBALS)


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


def write_failure(path: str, exc: OSError) -> CheckpointError:
    """The one-line error for a checkpoint that could not be written (a full disk, a read-only or gone
    folder), naming the path and the free space there."""
    import shutil

    folder = osp.dirname(osp.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    reason = exc.strerror or str(exc)
    return CheckpointError(
        f"cannot write checkpoint {path}: {reason} ({free} in {folder}). Nothing half-written was kept and "
        "last_checkpoint still names the previous checkpoint. Free some space (or lower save_total_limit) and "
        "resume with --resume auto."
    )


def remove_path(path: str) -> None:
    """Delete a file or folder if it exists (a temporary checkpoint after a failed write)."""
    import shutil

    if osp.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif osp.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def load_checkpoint_file(path: str, map_location: str = "cpu") -> dict:
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


class PlainMessageHubMixin:
    """For runners: the message hub goes into checkpoints as plain data and is rebuilt on load; the
    run's data shape goes into checkpoints and is checked on resume (see :meth:`data_shape`)."""

    allow_changed_data = False  # xtune train --allow-changed-data

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

    def call_hook(self, fn_name: str, **kwargs) -> None:
        """Store the message hub as plain data in checkpoints, and rebuild it when one is loaded."""
        checkpoint = kwargs.get("checkpoint")
        if fn_name == "before_save_checkpoint" and "message_hub" in checkpoint:
            checkpoint["message_hub"] = message_hub_to_plain(checkpoint["message_hub"])
            checkpoint.setdefault("meta", {})["data_shape"] = self.data_shape()
        if fn_name == "after_load_checkpoint" and "message_hub" in checkpoint:
            checkpoint["message_hub"] = message_hub_from_plain(checkpoint["message_hub"])
            if self._resume:
                self._check_data_shape(checkpoint)
        super().call_hook(fn_name, **kwargs)


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
class XtuneRunner(QuietConsoleMixin, PlainMessageHubMixin, Runner):
    """mmengine's Runner with crash-safe checkpoint writes, safe resume and DDP on CPU or GPU."""

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module):
        """mmengine's wrapping, with :func:`ddp_settings` as the default under several ranks."""
        if self.distributed and not is_model_wrapper(model):
            settings = ddp_settings(model)
            settings.update(model_wrapper_cfg or {})
            model_wrapper_cfg = settings
        return super().wrap_model(model_wrapper_cfg, model)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """Write to ``<filename>.tmp`` and rename, so a crash never leaves a half-written checkpoint.

        Rank 0 writes (mmengine's ``save_checkpoint`` does nothing on the others); all ranks wait for it.
        """
        tmp_name = f"{filename}.tmp"
        tmp, final = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
            if is_main_process() and osp.exists(tmp):
                os.replace(tmp, final)
        except OSError as exc:
            remove_path(tmp)
            raise write_failure(final, exc) from None
        barrier()

    def load_checkpoint(self, filename: str, *args, **kwargs):
        with safe_loading():
            checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        # mmengine's resume runs meta['config'] as Python (Config.fromstring) to compare GPU counts; a
        # checkpoint is data and nothing in it may run, so that text never reaches it.
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("meta"), dict):
            checkpoint["meta"].pop("config", None)
        return checkpoint

    def resume(self, filename: str, *args, **kwargs) -> None:
        load_checkpoint_file(filename)  # a clear error for a damaged file before mmengine's own
        with safe_loading(), contextlib.nullcontext():
            super().resume(filename, *args, **kwargs)
