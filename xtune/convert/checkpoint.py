"""Read a training checkpoint and rebuild the trained model from it.

Every checkpoint kind goes through :func:`read_checkpoint`: an mmengine ``.pth`` file today, and any
folder format whose reader is listed in :data:`FOLDER_READERS` (a DeepSpeed ZeRO reader plugs in
there as one function). Whatever the kind, the weights come back keyed as
:meth:`xtune.model.SupervisedFinetune.state_dict` names them (``llm.``-prefixed; only the trainable
weights for every finetuning type but ``full``).
"""

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from xtune.convert.zero import is_zero_checkpoint, load_trained_zero_weights
from xtune.errors import CheckpointError, ConfigError
from xtune.hf.dtypes import dtype_name, resolve_dtype

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FolderReader:
    """A reader of one checkpoint folder format.

    Attributes:
        name: What the format is called in messages (``"DeepSpeed ZeRO"``).
        detect: Whether a folder is in this format.
        load: The folder's model weights, keyed like ``SupervisedFinetune.state_dict()``, on CPU.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], StateDict]


# Checkpoint folder formats, tried in order.
FOLDER_READERS: list[FolderReader] = [
    FolderReader("DeepSpeed ZeRO", is_zero_checkpoint, load_trained_zero_weights),
]


@dataclass
class TrainedCheckpoint:
    """The weights of a checkpoint and what it says about its training run.

    Attributes:
        state: Model weights keyed like ``SupervisedFinetune.state_dict()``.
        config_text: The resolved training config saved with it (mmengine's ``meta['cfg']``), if any.
        meta: The checkpoint's mmengine ``meta`` (iteration, seed, ...); empty for folders.
    """

    state: StateDict
    config_text: str | None = None
    meta: dict = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> TrainedCheckpoint:
    """Read the model weights of a ``.pth`` checkpoint file or a known checkpoint folder, on CPU.

    Raises:
        CheckpointError: The path is missing, truncated, not a checkpoint, or a folder no reader knows.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path}. Pass a checkpoint from the training work dir, e.g. "
            "work_dirs/<config>/iter_500.pth (its last_checkpoint file names the newest)."
        )
    if path.is_dir():
        return TrainedCheckpoint(state=_checked_state(_read_folder(path), path))
    from xtune.engine.runner import load_checkpoint_file

    checkpoint = load_checkpoint_file(str(path))
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    config_text = meta.get("cfg") if isinstance(meta.get("cfg"), str) else None
    return TrainedCheckpoint(_checked_state(checkpoint["state_dict"], path), config_text, meta)


def saved_model_settings(trained: TrainedCheckpoint) -> dict | None:
    """The ``model`` dict of the config a checkpoint was saved with, read as data, or None.

    The config text in a checkpoint (mmengine's ``meta['cfg']``) is Python, but a checkpoint is data:
    it is parsed, never run (:func:`xtune.config.literal.read_assignments`), and only literal values
    are taken. A text that holds code yields no settings rather than running it.
    """
    from xtune.config.literal import NotALiteral, read_assignments

    if not trained.config_text:
        return None
    try:
        model = read_assignments(trained.config_text).get("model")
    except NotALiteral:
        return None
    return model if isinstance(model, dict) else None


def load_trainable_state(path: str | Path) -> StateDict:
    """The model weights a checkpoint holds (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state


def _read_folder(path: Path) -> StateDict:
    for reader in FOLDER_READERS:
        if reader.detect(path):
            return reader.load(path)
    if any(path.glob("*/*model_states.pt")):
        raise CheckpointError(
            f"{path} holds DeepSpeed checkpoints but is not one: pass one of its iter_*.pth folders "
            f"(the newest is named in {path / 'last_checkpoint'})."
        )
    if any(path.glob("*model_states.pt")):
        raise CheckpointError(
            f"{path} looks like a DeepSpeed checkpoint but is incomplete (a rank's files are missing or it "
            "was copied while being written). Use another iter_*.pth folder."
        )
    known = ", ".join(reader.name for reader in FOLDER_READERS) or "none in this build"
    raise CheckpointError(
        f"{path} is a folder but not a checkpoint xtune can read (known folder formats: {known}). "
        "Pass an iter_*.pth file from the training work dir."
    )


def _checked_state(state, path: Path) -> StateDict:
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no model weights: its state_dict is empty or not a dict.")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not an xtune checkpoint: '{bad[0]}' in its state_dict is not a tensor.")
    # A model saved while wrapped for distributed training may carry the wrapper's prefix.
    return {key.removeprefix("module."): value for key, value in state.items()}


def stored_dtype(state: StateDict) -> str | None:
    """The dtype name (``bf16``, ``fp16``, ``fp32``) most of the checkpoint's floating weights have."""
    counts: dict[str, int] = {}
    for value in state.values():
        name = dtype_name(value.dtype)
        if name is not None:
            counts[name] = counts.get(name, 0) + value.numel()
    return max(counts, key=counts.get) if counts else None


def model_settings(cfg: Config) -> dict:
    """The config's ``model`` dict, as a plain dict.

    Raises:
        ConfigError: The config has no ``model`` dict.
    """
    model = cfg.get("model")
    if not isinstance(model, dict) or not model.get("type"):
        source = cfg.filename or "the config"
        raise ConfigError(
            f"{source} has no model dict with a type; pass the config used in training, or the resolved "
            "copy that `xtune train` wrote into the work dir."
        )
    return copy.deepcopy(model.to_dict() if hasattr(model, "to_dict") else dict(model))


def build_trained_model(
    cfg: Config,
    state: StateDict,
    dtype: str | None = None,
    quantized: bool = False,
    source: str = "the checkpoint",
):
    """Build the config's model and load the trained weights into it.

    Args:
        cfg: The resolved training config.
        state: Weights from :func:`read_checkpoint`.
        dtype: ``bf16``, ``fp16``, ``fp32`` or ``auto`` to build in; None: the config's own dtype.
        quantized: Keep a ``qlora`` model's 4-bit base (needs CUDA). Otherwise a ``qlora`` model is built
            as ``lora`` on an unquantized base: the adapter weights and their names are the same.
        source: How messages name the checkpoint.

    Returns:
        The :class:`~xtune.model.SupervisedFinetune` in eval mode, its ``llm`` ready for generation.

    Raises:
        CheckpointError: The weights do not fit the model the config builds.
    """
    import xtune.model  # noqa: F401  (registers SupervisedFinetune)
    from xtune.registry import MODELS

    settings = model_settings(cfg)
    if settings.get("finetune_type") == "qlora" and not quantized:
        settings["finetune_type"] = "lora"
        settings.pop("quantization", None)
    if dtype is not None:
        settings["dtype"] = dtype
    if settings.get("projector") and _holds_projector(state):
        # the run trained its projector: the checkpoint has it, the pretrain stage's files are not needed
        settings["projector"] = None
    # Gradient checkpointing only matters for training; it would also switch the KV cache off.
    settings["gradient_checkpointing"] = False
    # How training split and stored its activations: one process generates and converts on whole rows.
    settings.update(sequence_parallel_size=1, activation_offload=False, tiled_mlp=0)
    # SupervisedFinetune logs its parameter counts, a training-time message; chat and convert keep
    # stdout for their own output.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model = MODELS.build(settings)
    finally:
        logger.setLevel(level)
    load_trained_state(model, state, source)
    model.eval()
    model.llm.config.use_cache = True
    return model


def _holds_projector(state: StateDict) -> bool:
    """Whether a vision run's checkpoint holds its projector's weights."""
    from xtune.hf.vision import VISION_FAMILIES

    paths = {path for family in VISION_FAMILIES.values() for path in family.projectors}
    return any(path + "." in key for key in state for path in paths)


def load_trained_state(model, state: StateDict, source: str = "the checkpoint") -> None:
    """Load ``state`` into a ``SupervisedFinetune``, failing clearly when it was trained for another model.

    Raises:
        CheckpointError: Weights the model lacks, trained weights the checkpoint lacks, or shapes that differ.
    """
    expected = model.state_dict()  # every weight for full; the trainable ones otherwise
    known = expected.keys() | dict(model.named_parameters()).keys()  # frozen weights may be loaded too
    unexpected = [key for key in state if key not in known]
    missing = [key for key in expected if key not in state]
    hint = (
        "Convert with the config (and --cfg-options) it was trained with: the same base model, "
        "finetune_type and lora settings."
    )
    if unexpected:
        raise CheckpointError(
            f"{source} does not fit the model the config builds ({model.finetune_type}, "
            f"{model.pretrained_model_name_or_path}): {len(unexpected)} of its weights are not in the model, "
            f"e.g. '{unexpected[0]}'. {hint}"
        )
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} of the {len(expected)} weights the config trains "
            f"({model.finetune_type}), e.g. '{missing[0]}'. {hint}"
        )
    mismatched = [
        f"'{key}' is {tuple(value.shape)} in the checkpoint but {tuple(expected[key].shape)} in the model"
        for key, value in state.items()
        if key in expected and tuple(value.shape) != tuple(expected[key].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{source} does not fit the model: {mismatched[0]} ({len(mismatched)} such). {hint}")
    model.load_state_dict(state, strict=False)


def training_dtype(cfg: Config, state: StateDict) -> str:
    """The dtype a run trained in: the config's, or for ``auto`` the dtype its weights were saved in."""
    configured = model_settings(cfg).get("dtype", "auto")
    if configured != "auto":
        return resolve_dtype(configured, knob="model.dtype")
    return stored_dtype(state) or resolve_dtype("auto")


def tokenizer_settings(cfg: Config) -> tuple[str, str]:
    """Where the training tokenizer came from and which ``prompt_template`` it was given."""
    dataset = cfg.get("train_dataset")
    dataset = dataset if isinstance(dataset, dict) else {}
    path = dataset.get("tokenizer")
    if not isinstance(path, str):
        path = model_settings(cfg)["pretrained_model_name_or_path"]
    template = dataset.get("prompt_template", cfg.get("prompt_template", "auto"))
    return path, template or "auto"
