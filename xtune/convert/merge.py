"""Merge a PEFT adapter into its base model and save a standalone model folder.

Runs on the CPU by default: the base is loaded once, in its own dtype, and the adapter is merged into
it in place, so the peak memory is about one copy of the model.
"""

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig

from xtune.convert.adapter import attach_adapter, read_adapter_config
from xtune.convert.hf_files import CONFIG_COPY, check_shard_size, has_tokenizer
from xtune.convert.output import check_save_dir, staged_dir
from xtune.convert.vision import save_processor_files, verification_inputs
from xtune.errors import XtuneError
from xtune.hf.dtypes import check_dtype, resolve_device
from xtune.hf.load import load_model, load_tokenizer, recorded_dtype
from xtune.hf.vision import is_vision_language, load_processor, load_vision_model
from xtune.model.vision import token_type_ids

# Largest logit difference --verify accepts, relative to the largest logit (at least 1): the merged
# weights are rounded once more to the dtype than base + adapter, and the error grows layer by layer.
VERIFY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_adapter` wrote and, with ``verify``, how close the merged model is.

    Attributes:
        save_dir: The merged model folder.
        dtype: The dtype it was saved in.
        max_logit_diff: Largest absolute logit difference, base + adapter vs merged (``verify`` only).
        tolerance: The largest difference accepted (``verify`` only).
    """

    save_dir: Path
    dtype: str
    max_logit_diff: float | None = None
    tolerance: float | None = None


def load_base(base: str | Path, dtype: str, device: str = "cpu"):
    """Load the base model (a causal LM, or a vision-language model) in ``dtype`` on ``device``.

    Raises:
        XtuneError: The base model cannot be loaded.
    """
    fix = "Pass a Hugging Face model folder."
    loader = load_vision_model if is_vision_language(base) else load_model
    model = loader(base, dtype=dtype, device=device, what="the base model", fix=fix, error=XtuneError)
    return model.eval()


def verification_batch(vocab_size: int, seed: int = 0) -> torch.Tensor:
    """The fixed random token ids that ``--verify`` runs through both models."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (2, 32), generator=generator)


@torch.no_grad()
def _logits(model, inputs: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    moved = {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    return model(**moved, use_cache=False).logits.float().cpu()


def merge_adapter(
    base: str | Path,
    adapter: str | Path,
    save_dir: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    max_shard_size: str = "5GB",
    verify: bool = False,
    overwrite: bool = False,
) -> MergeResult:
    """Merge ``adapter`` into ``base`` and save the result with the tokenizer to ``save_dir``.

    A vision-language base (LLaVA, Qwen2.5-VL) is merged the same way and saved with its processor files
    (:func:`xtune.convert.vision.save_processor_files`); ``verify`` then runs an image through both.

    Args:
        base: The base model folder (or hub name) the adapter was trained on.
        adapter: A PEFT adapter folder (from ``xtune convert pth_to_hf``).
        save_dir: The folder to create.
        device: ``cpu``, ``cuda`` or ``auto``.
        dtype: ``auto`` (the base model's own dtype), ``bf16``, ``fp16`` or ``fp32``.
        max_shard_size: Largest weight file.
        verify: Compare base + adapter with the merged model on a fixed random batch first.
        overwrite: Replace an existing non-empty ``save_dir``.

    Raises:
        CheckpointError: The adapter is missing or does not fit the base model.
        XtuneError: ``verify`` found the merged model too far from base + adapter (nothing is written).
    """
    check_shard_size(max_shard_size)
    check_dtype(dtype, "--dtype")
    save_dir = check_save_dir(save_dir, overwrite)
    read_adapter_config(adapter)  # a missing adapter fails before the base model is loaded
    device = resolve_device(device)
    dtype = recorded_dtype(base) if dtype == "auto" else dtype
    print(f"xtune: loading {base} ({dtype}, {device})", file=sys.stderr)
    model = attach_adapter(load_base(base, dtype, device), adapter, base_name=f"the base model {base}")
    tokenizer_source = adapter if has_tokenizer(adapter) else base
    tokenizer = _load_tokenizer(tokenizer_source)
    processor = None
    if is_vision_language(base):
        processor = load_processor(base, fix="Pass a Hugging Face model folder.", error=XtuneError)
        if tokenizer is not None:  # the training tokenizer and template, saved beside the adapter
            processor.tokenizer = tokenizer
    diff = tolerance = None
    if verify:
        inputs = {"input_ids": verification_batch(model.get_base_model().config.get_text_config().vocab_size)}
        if processor is not None:
            inputs = verification_inputs(processor, inputs["input_ids"], token_types=token_type_ids(model))
        expected = _logits(model, inputs)
    merged = model.merge_and_unload()
    if verify:
        diff = float((_logits(merged, inputs) - expected).abs().max())
        tolerance = VERIFY_TOLERANCE[dtype] * max(1.0, float(expected.abs().max()))
        if not diff <= tolerance:
            raise XtuneError(
                f"--verify: the merged model's logits differ from base + adapter by {diff:.3g}, more than "
                f"{tolerance:.3g}; nothing was written. Merge in fp32 (--dtype fp32) to check the adapter "
                "itself."
            )
    merged.config.use_cache = True
    generation_file = Path(adapter) / "generation_config.json"
    if generation_file.is_file():  # written by pth_to_hf: stops at the training template's end tokens
        merged.generation_config = GenerationConfig.from_pretrained(str(adapter))
    with staged_dir(save_dir, overwrite) as staging:
        merged.save_pretrained(str(staging), max_shard_size=max_shard_size)
        if processor is not None:
            save_processor_files(staging, processor, merged.config, base)
        elif tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        if (Path(adapter) / CONFIG_COPY).is_file():
            shutil.copyfile(Path(adapter) / CONFIG_COPY, staging / CONFIG_COPY)
    print(f"xtune: saved the merged {dtype} model to {save_dir}", file=sys.stderr)
    return MergeResult(Path(save_dir), dtype, diff, tolerance)


def _load_tokenizer(source: str | Path):
    try:
        return load_tokenizer(source, pad=False, fix="", error=XtuneError)  # saved as it was found
    except XtuneError as exc:
        print(f"xtune: warning: no tokenizer saved: {str(exc).strip()}", file=sys.stderr)
        return None
