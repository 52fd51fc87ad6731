"""The Runner: mmengine's, with atomic checkpoint writes and resume under ``weights_only=True``."""

import contextlib
import os
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
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
    """For runners: the message hub goes into checkpoints as plain data and is rebuilt on load."""

    def call_hook(self, fn_name: str, **kwargs) -> None:
        """Store the message hub as plain data in checkpoints, and rebuild it when one is loaded."""
        checkpoint = kwargs.get("checkpoint")
        if fn_name == "before_save_checkpoint" and "message_hub" in checkpoint:
            checkpoint["message_hub"] = message_hub_to_plain(checkpoint["message_hub"])
        if fn_name == "after_load_checkpoint" and "message_hub" in checkpoint:
            checkpoint["message_hub"] = message_hub_from_plain(checkpoint["message_hub"])
        super().call_hook(fn_name, **kwargs)


@RUNNERS.register_module()
class XtuneRunner(QuietConsoleMixin, PlainMessageHubMixin, Runner):
    """mmengine's Runner with crash-safe checkpoint writes and safe resume."""

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """Write to ``<filename>.tmp`` and rename, so a crash never leaves a half-written checkpoint."""
        tmp_name = f"{filename}.tmp"
        super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        tmp, final = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        if osp.exists(tmp):
            os.replace(tmp, final)

    def load_checkpoint(self, filename: str, *args, **kwargs):
        with safe_loading():
            return super().load_checkpoint(filename, *args, **kwargs)

    def resume(self, filename: str, *args, **kwargs) -> None:
        load_checkpoint_file(filename)  # a clear error for a damaged file before mmengine's own
        with safe_loading(), contextlib.nullcontext():
            super().resume(filename, *args, **kwargs)
