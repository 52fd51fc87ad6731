"""Training checkpoint -> a Hugging Face folder that loads without xtune.

LoRA, DoRA and QLoRA runs become a PEFT adapter folder (``adapter_config.json`` naming the base
model, ``adapter_model.safetensors``) that ``PeftModel.from_pretrained(base, folder)`` loads; full and
freeze runs become a complete model folder. Both get the training tokenizer with the training chat
template, a ``generation_config.json`` that stops at the template's end-of-turn token, and a copy of
the training config.

Vision-language runs (:mod:`xtune.convert.vision`): a LLaVA composed from a ``vision_tower`` always
becomes a complete ``LlavaForConditionalGeneration`` folder (LoRA adapters merged in, the trained
projector with it), since its base exists nowhere as a folder; a run on a VLM folder becomes an adapter
or a full folder as above. Both get the processor files (image processor, LLaVA's processor settings).
"""

import sys
from pathlib import Path
from typing import Any

from mmengine.config import Config

from xtune.config import load_config
from xtune.convert.checkpoint import (
    TrainedCheckpoint,
    build_trained_model,
    model_settings,
    read_checkpoint,
    saved_model_settings,
    tokenizer_settings,
    training_dtype,
)
from xtune.convert.hf_files import (
    check_shard_size,
    generation_config_for,
    safetensors_to_bin,
    write_config_copy,
)
from xtune.convert.output import check_save_dir, staged_dir
from xtune.convert.vision import is_vision_run, save_processor_files, trained_processor
from xtune.hf.dtypes import check_dtype, torch_dtype

ADAPTER_TYPES = ("lora", "dora", "qlora")


def pth_to_hf(
    config: str | Path,
    checkpoint: str | Path,
    save_dir: str | Path,
    cfg_options: dict[str, Any] | None = None,
    dtype: str = "auto",
    max_shard_size: str = "5GB",
    safe_serialization: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert a training checkpoint into a Hugging Face folder.

    Args:
        config: The training config (name or path, or the resolved copy in the work dir).
        checkpoint: An ``iter_*.pth`` file (or a checkpoint folder a reader in
            :data:`xtune.convert.checkpoint.FOLDER_READERS` knows).
        save_dir: The folder to create.
        cfg_options: The ``--cfg-options`` the run was trained with.
        dtype: ``auto`` (the training dtype), ``bf16``, ``fp16`` or ``fp32``. For adapters, ``auto`` keeps
            the dtype the adapter weights were trained in.
        max_shard_size: Largest weight file of a full model.
        safe_serialization: Write safetensors (else PyTorch ``.bin`` files).
        overwrite: Replace an existing non-empty ``save_dir``.

    Returns:
        ``save_dir``.

    Raises:
        ConfigError: The config cannot be loaded or has no model.
        CheckpointError: The checkpoint is missing, damaged, or was not trained with this config.
    """
    check_dtype(dtype, "--dtype")
    check_shard_size(max_shard_size)
    save_dir = check_save_dir(save_dir, overwrite)
    cfg = load_config(config, cfg_options)
    finetune_type = model_settings(cfg).get("finetune_type", "lora")
    trained = read_checkpoint(checkpoint)
    _warn_if_other_run(cfg, trained, checkpoint)
    base_dtype = training_dtype(cfg, trained.state)
    out_dtype = base_dtype if dtype == "auto" else dtype
    is_adapter = finetune_type in ADAPTER_TYPES
    print(
        f"xtune: rebuilding the {finetune_type} model from {checkpoint} ({len(trained.state)} weights)",
        file=sys.stderr,
    )
    model = build_trained_model(
        cfg, trained.state, dtype=base_dtype if is_adapter else out_dtype, source=f"checkpoint {checkpoint}"
    )
    from xtune.dataset.tokenizer import load_tokenizer_with_template

    settings = model_settings(cfg)
    tokenizer_path, template = tokenizer_settings(cfg)
    processor = trained_processor(settings, tokenizer_path, template) if is_vision_run(settings) else None
    if processor is not None:
        tokenizer = processor.tokenizer
    else:
        tokenizer = load_tokenizer_with_template(tokenizer_path, template, bool(settings.get("trust_remote_code")))
    generation_config = generation_config_for(model.llm, tokenizer, template)
    composed = bool(settings.get("vision_tower"))
    with staged_dir(save_dir, overwrite) as staging:
        if is_adapter and not composed:
            if dtype != "auto":
                _cast_trainable(model.llm, torch_dtype(dtype))
            model.llm.save_pretrained(str(staging), safe_serialization=safe_serialization)
            # Saved beside the adapter so that `xtune chat --adapter` and `xtune convert merge` ask and
            # stop as training taught; PEFT itself ignores these files.
            generation_config.save_pretrained(str(staging))
        else:
            llm = model.llm
            if is_adapter:  # a composed LLaVA: its adapters merged into the one folder it becomes
                llm = llm.merge_and_unload().to(torch_dtype(out_dtype))
            llm.generation_config = generation_config
            llm.save_pretrained(str(staging), max_shard_size=max_shard_size)
            if not safe_serialization:
                safetensors_to_bin(staging)
        if processor is not None:
            base = None if composed else settings["pretrained_model_name_or_path"]
            save_processor_files(staging, processor, _base_config(model.llm), base)
        else:
            tokenizer.save_pretrained(str(staging))
        write_config_copy(staging, cfg.pretty_text, f"converted from {Path(checkpoint).name}")
    kind = "PEFT adapter" if is_adapter and not composed else f"{out_dtype} model"
    print(f"xtune: saved the {kind} to {save_dir}", file=sys.stderr)
    return save_dir


def _base_config(llm):
    """The transformers config of ``llm``, under a PEFT wrapper or not."""
    return llm.get_base_model().config if hasattr(llm, "get_base_model") else llm.config


def _cast_trainable(llm, dtype) -> None:
    for param in llm.parameters():
        if param.requires_grad:
            param.data = param.data.to(dtype)


def _warn_if_other_run(cfg: Config, trained: TrainedCheckpoint, checkpoint: str | Path) -> None:
    """Warn when the checkpoint's own config names another base model or finetuning type.

    Only a warning: a base model may have moved between training and conversion. Checkpoints that do not
    fit the model at all fail later, when their weights are loaded. The checkpoint's config is read as
    data (:func:`saved_model_settings`); nothing in a checkpoint is ever run.
    """
    saved_model = saved_model_settings(trained)
    if saved_model is None:
        return
    current = model_settings(cfg)
    for key in ("pretrained_model_name_or_path", "finetune_type"):
        if saved_model.get(key) != current.get(key):
            print(
                f"xtune: warning: {checkpoint} was trained with model.{key}={saved_model.get(key)!r}, "
                f"but the config says {current.get(key)!r}. Pass the config the checkpoint was trained with.",
                file=sys.stderr,
            )
