"""``--deepspeed``: find the DeepSpeed JSON, fill its ``"auto"`` values from the config, and turn the
config into one for mmengine's FlexibleRunner with a DeepSpeed strategy.

The xtune config is the single source of truth for what it already says: micro-batch size, gradient
accumulation, gradient clipping, precision, optimizer and learning-rate schedule. A DeepSpeed JSON
says how to shard and offload. Where a user's JSON sets one of the config's values to something
else, the difference is reported and the config's value is used, so that a run trains the same with
and without ``--deepspeed``.

Nothing here imports DeepSpeed: an unknown preset or a broken JSON fails before any worker starts.
"""

import copy
import json
import os
from pathlib import Path

from xtune.errors import ConfigError
from xtune.paths import CONFIG_DIR

PRESETS: tuple[str, ...] = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")
"""The shipped DeepSpeed configs (``configs/deepspeed/<name>.json``)."""

PRESET_DIR = CONFIG_DIR / "deepspeed"

# Sections xtune drives itself: DeepSpeed gets the config's torch optimizer as its client optimizer
# (DeepSpeed's FusedAdam does not build everywhere) and mmengine's param schedulers set the lr.
_DRIVEN_BY_CONFIG = {
    "optimizer": "optim_wrapper.optimizer",
    "scheduler": "param_scheduler",
}


def find_deepspeed_config(name_or_path: str) -> Path:
    """The JSON file that a ``--deepspeed`` value names.

    Args:
        name_or_path: A preset (``zero2``; XTuner's spelling ``deepspeed_zero2`` works too) or a path to
            a DeepSpeed JSON file.

    Raises:
        ConfigError: Neither a preset nor an existing file; the message lists the presets.
    """
    name = name_or_path.removeprefix("deepspeed_")
    if name in PRESETS:
        return PRESET_DIR / f"{name}.json"
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise ConfigError(
        f"--deepspeed {name_or_path}: not a preset and no such file. Use one of {', '.join(PRESETS)} "
        "(deepspeed_zero2 etc. also work), or the path to a DeepSpeed JSON file."
    )


def read_deepspeed_config(path: str | Path) -> dict:
    """A DeepSpeed JSON file as a dict.

    Raises:
        ConfigError: The file is not valid JSON or not a JSON object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            "DeepSpeed configs are plain JSON: no comments, no trailing commas."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object (a DeepSpeed config), not a {type(data).__name__}.")
    return data


def config_values(cfg) -> dict:
    """What the xtune config says about batch size, accumulation, clipping and precision.

    Returns:
        ``micro_batch``, ``accumulate``, ``max_norm`` (0.0: off) and ``dtype`` (``bf16``/``fp16``/``fp32``).
    """
    from xtune.hf.dtypes import resolve_dtype

    optim_wrapper = cfg.get("optim_wrapper") or {}
    clip = optim_wrapper.get("clip_grad") or {}
    model = cfg.get("model") or {}
    dataloader = cfg.get("train_dataloader") or {}
    return {
        "micro_batch": int(dataloader.get("batch_size", 1)),
        "accumulate": int(optim_wrapper.get("accumulative_counts", 1)),
        "max_norm": float(clip.get("max_norm") or 0.0),
        "dtype": resolve_dtype(model.get("dtype", cfg.get("dtype", "auto")), knob="model.dtype"),
    }


def resolve_deepspeed_config(ds: dict, cfg, source: str = "the DeepSpeed config") -> tuple[dict, list[str]]:
    """Fill a DeepSpeed config's ``"auto"`` values from the xtune config; the config wins conflicts.

    Args:
        ds: The DeepSpeed config as read from JSON (not modified).
        cfg: The resolved xtune config.
        source: How messages name the JSON.

    Returns:
        The DeepSpeed config to run with, and one message per conflict the user should know about
        (empty when the JSON agrees with the config or leaves the values to it).
    """
    ds = copy.deepcopy(ds)
    wanted = config_values(cfg)
    notes: list[str] = []

    def settle(key: str, value, knob: str, section: dict | None = None, label: str | None = None) -> None:
        section = ds if section is None else section
        current = section.get(key, "auto")
        if current != "auto" and current != value:
            notes.append(
                f"{source} sets {label or key}={current!r} but the config's {knob} gives {value!r}; using {value!r}."
            )
        section[key] = value

    world = int(os.environ.get("WORLD_SIZE", "0"))
    settle("train_micro_batch_size_per_gpu", wanted["micro_batch"], "batch_size")
    settle("gradient_accumulation_steps", wanted["accumulate"], "accumulative_counts")
    settle("gradient_clipping", wanted["max_norm"], "max_norm (0.0: no clipping)")
    if world:
        total = wanted["micro_batch"] * wanted["accumulate"] * world
        settle("train_batch_size", total, f"batch_size x accumulative_counts x {world} ranks")
    elif ds.get("train_batch_size") == "auto":
        del ds["train_batch_size"]  # DeepSpeed derives it from the two values above and the world size

    if "bfloat16" in ds and "bf16" not in ds:
        ds["bf16"] = ds.pop("bfloat16")  # DeepSpeed's older spelling
    for name in ("fp16", "bf16"):
        section = ds.get(name)
        enabled = wanted["dtype"] == name
        if section is None:
            if enabled:
                ds[name] = {"enabled": True}
            continue
        settle("enabled", enabled, f"dtype ({wanted['dtype']})", section, label=f"{name}.enabled")

    for key, knob in _DRIVEN_BY_CONFIG.items():
        if key in ds:
            del ds[key]
            notes.append(f"{source} has a '{key}' section, which xtune does not use: the config's {knob} is used.")

    # Left-over "auto" values (Hugging Face-style bucket sizes) fall back to DeepSpeed's defaults.
    _drop_auto(ds)
    # xtune always passes a torch optimizer; DeepSpeed would refuse it under ZeRO or with offload otherwise.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("zero_force_ds_cpu_optimizer", False)
    return ds, notes


def _drop_auto(section: dict) -> None:
    for key in list(section):
        if section[key] == "auto":
            del section[key]
        elif isinstance(section[key], dict):
            _drop_auto(section[key])


def _match_quant_storage(cfg, ds: dict) -> list[str]:
    """QLoRA under ZeRO-3: the 4-bit weights must be stored in the training dtype.

    ZeRO-3 partitions every parameter as a flat tensor of the training dtype; bitsandbytes packs 4-bit
    weights into ``bnb_4bit_quant_storage`` (uint8 by default), so that dtype must be the training one.
    Sets it when the config leaves it unset.

    Raises:
        ConfigError: The config sets a different storage dtype.
    """
    from xtune.hf.dtypes import LONG_NAMES, resolve_dtype

    model = cfg.get("model") or {}
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if model.get("finetune_type") != "qlora" or stage != 3:
        return []
    wanted = LONG_NAMES[resolve_dtype(model.get("dtype", "auto"), knob="model.dtype")]  # e.g. bfloat16
    quantization = dict(model.get("quantization") or {})
    current = quantization.get("bnb_4bit_quant_storage")
    if current is None:
        quantization["bnb_4bit_quant_storage"] = wanted
        cfg.model["quantization"] = quantization
        return [f"qlora under ZeRO-3: storing the 4-bit weights as {wanted} (bnb_4bit_quant_storage) to shard them."]
    if str(current).removeprefix("torch.") != wanted:
        raise ConfigError(
            f"qlora under ZeRO-3 needs model.quantization.bnb_4bit_quant_storage='{wanted}' (the training dtype), "
            f"got '{current}'. Remove the setting (xtune sets it) or use --deepspeed zero2."
        )
    return []


def use_deepspeed(cfg, name_or_path: str) -> list[str]:
    """Rewrite ``cfg`` in place to train with DeepSpeed (the runner's DeepSpeed strategy).

    The optimizer wrapper becomes mmengine's ``DeepSpeedOptimWrapper`` around the config's own torch
    optimizer (Adam and AdamW fused by :class:`~xtune.engine.optim.FusedAdamConstructor` unless the
    config names another constructor or sets ``fused``); the strategy holds
    the filled DeepSpeed config and excludes frozen weights from checkpoints.

    Returns:
        The conflict messages of :func:`resolve_deepspeed_config`.

    Raises:
        ConfigError: Unknown preset, unreadable JSON, or a config without an optimizer.
    """
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--deepspeed needs DeepSpeed, which is not installed: pip install 'xtune[deepspeed]'.")
    path = find_deepspeed_config(name_or_path)
    ds, notes = resolve_deepspeed_config(read_deepspeed_config(path), cfg, str(path))
    optim_wrapper = cfg.get("optim_wrapper") or {}
    optimizer = copy.deepcopy(optim_wrapper.get("optimizer"))
    if not optimizer:
        raise ConfigError("--deepspeed needs optim_wrapper.optimizer in the config (e.g. dict(type='AdamW', lr=2e-4)).")
    optimizer = optimizer.to_dict() if hasattr(optimizer, "to_dict") else dict(optimizer)
    # FusedAdamConstructor (also the shipped schedules' choice) makes Adam(W) fused, on CUDA and for
    # optimizer states offloaded to the CPU alike.
    wrapper = {"type": "DeepSpeedOptimWrapper", "optimizer": optimizer, "constructor": "FusedAdamConstructor"}
    for key in ("constructor", "paramwise_cfg"):
        if optim_wrapper.get(key) is not None:
            wrapper[key] = optim_wrapper[key]
    cfg.optim_wrapper = wrapper
    notes += _match_quant_storage(cfg, ds)
    cfg.strategy = {"type": "XtuneDeepSpeedStrategy", "config": ds, "exclude_frozen_parameters": True}
    cfg.runner_type = "XtuneRunner"  # the one runner; the strategy makes it a DeepSpeed run
    cfg.deepspeed = str(path)
    import xtune.engine.flexible_runner  # noqa: F401  (registers the strategy)

    return notes
