"""Read the trained weights out of a DeepSpeed ZeRO checkpoint folder, on CPU, without DeepSpeed.

A folder such as ``work_dirs/run/iter_500.pth/`` holds, per data-parallel rank ``r``:

- ``[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt``: that rank's slice of the fp32 master weights
  (plus its optimizer moments). ZeRO-1/2 cut each parameter group's flat vector into equal
  consecutive slices, one per rank; ZeRO-3 cuts every parameter into ``ceil(numel / ranks)`` pieces
  and each rank keeps its piece of every parameter, one after another.
- ``mp_rank_00_model_states.pt`` (ZeRO-1/2) or ``zero_pp_rank_{r}_mp_rank_00_model_states.pt``
  (ZeRO-3): parameter names and shapes, buffers, and the training loop's own state.

The fp32 weights are rebuilt rank by rank: each rank's file is opened (memory-mapped), its slices are
copied into the full tensors, and it is closed before the next, so only one rank's optimizer state is
touched at a time. Files are read with ``torch.load(weights_only=True)``; the few DeepSpeed classes
the files name are mapped to inert stand-ins (:data:`DEEPSPEED_CHECKPOINT_GLOBALS`), so nothing from
the file can run code and DeepSpeed need not be installed.
"""

import math
import pickle
import re
from pathlib import Path

import torch

from xtune.errors import CheckpointError, refused_pickle

StateDict = dict[str, torch.Tensor]

DEEPSPEED_CHECKPOINT_GLOBALS: tuple[str, ...] = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""The classes DeepSpeed pickles into its checkpoint files, and nothing else is allowed.

Loss scalers are plain attribute bags, the ZeRO stage is an int enum, and a fragment address is a
``(numel, start)`` dataclass.
"""

_OPTIM_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


class _Attributes:
    """Stands in for DeepSpeed's loss scalers and fragment addresses: their pickled attributes land in
    ``__dict__``; no method of theirs is needed to read weights."""


def _zero_stage(value: int) -> int:
    """Stands in for ``ZeroStageEnum``: the stage as a plain int."""
    return int(value)


_STAND_INS = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": _Attributes,
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": _Attributes,
    "deepspeed.runtime.zero.config.ZeroStageEnum": _zero_stage,
    "deepspeed.utils.tensor_fragment.fragment_address": _Attributes,
}


def load_deepspeed_file(path: str | Path, allowed: list | None = None, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` of one DeepSpeed checkpoint file, memory-mapped where possible.

    Args:
        path: A ``*_model_states.pt`` or ``*_optim_states.pt`` file.
        allowed: Objects for the allow-list, as for ``torch.serialization.safe_globals``; by default
            the inert stand-ins of :data:`DEEPSPEED_CHECKPOINT_GLOBALS`.
        map_location: As for ``torch.load``.

    Raises:
        CheckpointError: The file is unreadable, truncated, or pickles anything beyond the allow-list.
    """
    if allowed is None:
        allowed = [(stand_in, name) for name, stand_in in _STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        what = refused_pickle(exc) or "pickled Python objects"
        raise CheckpointError(
            f"{path} holds {what}, which is not among what DeepSpeed checkpoints hold; xtune does not load "
            "it (loading could run code). Pass a checkpoint folder that xtune train --deepspeed wrote."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read {path} ({first}); the checkpoint may be incomplete. Use an earlier iter_* folder."
        ) from None


def is_zero_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a DeepSpeed ZeRO checkpoint folder (model and optimizer state files)."""
    path = Path(path)
    return path.is_dir() and any(path.glob("*model_states.pt")) and any(_optim_files_unsorted(path))


def _optim_files_unsorted(folder: Path):
    return (p for p in folder.glob("*_optim_states.pt") if _OPTIM_FILE.match(p.name))


def _optim_files(folder: Path) -> list[Path]:
    files = {}
    for path in _optim_files_unsorted(folder):
        rank, model_parallel = (int(g) for g in _OPTIM_FILE.match(path.name).groups())
        if model_parallel != 0:
            raise CheckpointError(
                f"{folder} was saved with tensor/model parallelism ({path.name}); xtune reads data-parallel "
                "ZeRO checkpoints only."
            )
        files[rank] = path
    ranks = sorted(files)
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{folder} lacks the optimizer states of some ranks: found ranks {ranks}.")
    return [files[r] for r in ranks]


def _model_file(folder: Path) -> Path:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} has no mp_rank_00_model_states.pt: it is not a complete DeepSpeed checkpoint.")


_DEEPSPEED_KEYS = {
    "module",
    "buffer_names",
    "optimizer",
    "param_shapes",
    "frozen_param_shapes",
    "shared_params",
    "frozen_param_fragments",
    "lr_scheduler",
    "data_sampler",
    "random_ltd",
    "sparse_tensor_module_names",
    "skipped_steps",
    "global_steps",
    "global_samples",
    "dp_world_size",
    "mp_world_size",
    "ds_config",
    "ds_version",
    "checkpoint_parallel_dimensions",
}


def zero_checkpoint_client_state(path: str | Path) -> dict:
    """What the training loop stored alongside DeepSpeed's own state (``meta`` with the config text,
    ``message_hub``, ...), from the folder's first model-states file."""
    state = load_deepspeed_file(_model_file(Path(path)))
    return {key: value for key, value in state.items() if key not in _DEEPSPEED_KEYS}


def load_zero_checkpoint(path: str | Path) -> StateDict:
    """The fp32 weights a ZeRO-1/2/3 checkpoint folder trained, keyed as the model named them.

    For xtune runs the keys are ``SupervisedFinetune.state_dict()``'s: ``llm.``-prefixed, and only the
    trainable weights (frozen ones are not saved). Persistent buffers and tied weights are included.

    Raises:
        CheckpointError: The folder is incomplete, inconsistent, or not a ZeRO checkpoint.
    """
    folder = Path(path)
    if not is_zero_checkpoint(folder):
        raise CheckpointError(
            f"{folder} is not a DeepSpeed ZeRO checkpoint folder: it needs *_model_states.pt and "
            "*_optim_states.pt files."
        )
    model_state = load_deepspeed_file(_model_file(folder))
    shapes = model_state.get("param_shapes")
    if not isinstance(shapes, list) or not shapes:
        raise CheckpointError(f"{folder}: the model states file has no parameter shapes.")
    files = _optim_files(folder)
    weights = {
        name: torch.empty(tuple(shape), dtype=torch.float32) for group in shapes for name, shape in group.items()
    }
    stage = None
    for rank, file in enumerate(files):
        optim = load_deepspeed_file(file).get("optimizer_state_dict") or {}
        stage = _check_rank(optim, stage, len(files), file)
        with torch.no_grad():  # the saved slices may be parameters; the copies must not join a graph
            if stage <= 2:
                _copy_stage12_slices(optim, shapes, weights, rank, len(files), file)
            else:
                _copy_stage3_slices(optim, shapes, weights, rank, len(files), file)
        del optim  # this rank's optimizer moments are not needed any more
    buffers = set(model_state.get("buffer_names") or [])
    module = model_state.get("module") or {}
    result = {name: value.float() if value.is_floating_point() else value for name, value in module.items()}
    result = {name: value.clone() for name, value in result.items() if name in buffers}
    result.update(weights)
    for alias, source in (model_state.get("shared_params") or {}).items():
        if source in result:
            result[alias] = result[source]
    return result


def _check_rank(optim: dict, stage: int | None, ranks: int, file: Path) -> int:
    found = optim.get("zero_stage")
    if found is None:
        raise CheckpointError(f"{file} is not a ZeRO optimizer state file: it has no zero_stage.")
    found = int(found)
    if stage is not None and found != stage:
        raise CheckpointError(f"{file} is ZeRO stage {found} but the folder's other ranks are stage {stage}.")
    count = optim.get("partition_count")
    count = max(count) if isinstance(count, list) else count
    if count != ranks:
        raise CheckpointError(
            f"{file.parent} was saved by {count} ranks but holds {ranks} optimizer state files; "
            "the save was interrupted or files were mixed from different saves."
        )
    return found


def _copy_overlap(target: torch.Tensor, target_start: int, source: torch.Tensor, source_start: int, n: int) -> None:
    if n > 0:
        target.view(-1)[target_start : target_start + n].copy_(source[source_start : source_start + n])


def _copy_stage12_slices(optim: dict, shapes: list, weights: StateDict, rank: int, ranks: int, file: Path) -> None:
    """ZeRO-1/2: group ``g``'s flat vector (parameters back to back, each followed by its alignment
    padding) is cut into equal slices; rank ``r`` holds ``[r * P, (r + 1) * P)``."""
    slices = optim.get("single_partition_of_fp32_groups")
    if not isinstance(slices, list) or len(slices) != len(shapes):
        raise CheckpointError(
            f"{file} holds {len(slices or [])} parameter groups; the model states name {len(shapes)}."
        )
    paddings = optim.get("param_alignment_paddings")
    for group, (names, piece) in enumerate(zip(shapes, slices)):
        size = piece.numel()
        begin, end = rank * size, (rank + 1) * size
        offset = 0
        for index, (name, shape) in enumerate(names.items()):
            numel = math.prod(shape)
            lo, hi = max(offset, begin), min(offset + numel, end)
            _copy_overlap(weights[name], lo - offset, piece, lo - begin, hi - lo)
            offset += numel + (paddings[group][index] if paddings else 0)
        if offset > size * ranks:
            raise CheckpointError(
                f"{file}: parameter group {group} needs {offset} values but the {ranks} ranks hold "
                f"{size * ranks}; the model states and optimizer states do not belong together."
            )


def _copy_stage3_slices(optim: dict, shapes: list, weights: StateDict, rank: int, ranks: int, file: Path) -> None:
    """ZeRO-3: every parameter is cut into ``ceil(numel / ranks)`` pieces (the last one padded); rank
    ``r`` keeps piece ``r`` of each parameter, in order, across its flat groups."""
    groups = optim.get("fp32_flat_groups")
    if not isinstance(groups, list) or not groups:
        raise CheckpointError(f"{file} has no fp32_flat_groups: it is not a ZeRO-3 optimizer state file.")
    flat = torch.cat([g.reshape(-1) for g in groups]) if len(groups) > 1 else groups[0].reshape(-1)
    offset = 0
    for names in shapes:
        for name, shape in names.items():
            numel = math.prod(shape)
            piece = math.ceil(numel / ranks)
            start = rank * piece
            _copy_overlap(weights[name], start, flat, offset, min(piece, numel - start))
            offset += piece
    if offset != flat.numel():
        raise CheckpointError(
            f"{file}: the parameters need {offset} values from this rank but it holds {flat.numel()}; "
            "the model states and optimizer states do not belong together."
        )


def zero_checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The dtype the model's weights had in training (bf16/fp16 when the DeepSpeed config enabled it)."""
    config = load_deepspeed_file(_model_file(Path(path))).get("ds_config") or {}
    for name, dtype in (("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp16", torch.float16)):
        if (config.get(name) or {}).get("enabled") is True:
            return dtype
    return torch.float32


def load_trained_zero_weights(path: str | Path) -> StateDict:
    """:func:`load_zero_checkpoint`'s weights rounded to the training dtype: the weights the model held,
    as a ``.pth`` checkpoint of the same run would hold them (``xtune convert`` reads folders this way)."""
    dtype = zero_checkpoint_dtype(path)
    state = load_zero_checkpoint(path)
    if dtype == torch.float32:
        return state
    return {name: value.to(dtype) if value.is_floating_point() else value for name, value in state.items()}
