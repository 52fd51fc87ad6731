"""The vision-language side of conversion: processor files, and inputs with an image for ``--verify``.

A converted VLM folder must load without xtune: ``AutoModelForImageTextToText`` for the weights and
``AutoProcessor`` for the text and pixels. So next to the weights go the tokenizer (with the image token
and the training chat template), the image processor (``preprocessor_config.json``), and for LLaVA the
processor's own settings (``processor_config.json``: patch size, feature selection, image token) that
transformers' ``LlavaProcessor`` and vLLM read to expand ``<image>``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from xtune.hf.vision import VisionProcessor, llava_processor

# Processor files of a VLM folder that only the family's own processor class writes (Qwen's needs
# torchvision): carried over from the base model as they are.
_CARRIED = ("processor_config.json", "video_preprocessor_config.json")


def save_processor_files(
    folder: str | Path, processor: VisionProcessor, config, base: str | Path | None = None
) -> None:
    """Write ``processor`` beside a model whose config is ``config``, as ``AutoProcessor`` reads it back.

    Args:
        folder: The output folder.
        processor: The tokenizer (training chat template installed) and image processor.
        config: The model's config (LLaVA's vision config says how many tokens an image makes).
        base: The VLM folder the model came from: its processor files that xtune cannot write itself are
            copied (none for a composed LLaVA).
    """
    folder = Path(folder)
    if base is not None and Path(base).is_dir():
        for name in _CARRIED:
            if (Path(base) / name).is_file():
                shutil.copyfile(Path(base) / name, folder / name)
    if config.model_type == "llava":
        llava_processor(processor, config).save_pretrained(str(folder))
    processor.save_pretrained(folder)  # the tokenizer as trained, and preprocessor_config.json


def verification_inputs(
    processor: VisionProcessor, text_ids: torch.Tensor, seed: int = 0, *, token_types: dict[int, int] | None = None
) -> dict:
    """Model inputs for ``--verify`` on a vision-language model: ``text_ids`` with one image's tokens in
    the middle of each row, and the pixels of a fixed random image, so a vision-tower or projector
    adapter is checked too.

    Args:
        processor: The model's processor.
        text_ids: ``(rows, length)`` random text token ids.
        seed: Seed of the random image.
        token_types: :func:`xtune.model.vision.token_type_ids` of the model: Qwen-VL's per-token modality,
            from which it computes its 3-D positions as in training (Qwen3-VL refuses images without it).
    """
    from PIL import Image

    from xtune.model.vision import vision_inputs

    generator = torch.Generator().manual_seed(seed)
    size = (48, 64)  # (height, width): not square, so resizing and cropping are exercised
    pixels = torch.randint(0, 256, (*size, 3), generator=generator, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    rows, length = text_ids.shape
    # Random ids that happen to be the image token (or another marker) would be taken for an image.
    tokenizer = processor.tokenizer
    special = torch.tensor(sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)))
    ordinary = next(i for i in range(len(tokenizer)) if i not in set(special.tolist()))
    text_ids = torch.where(torch.isin(text_ids, special), ordinary, text_ids)
    image_ids = processor.tokenizer(processor.image_text(processor.token_counts([size])[0]), add_special_tokens=False)
    image_ids = torch.tensor([image_ids["input_ids"]] * rows)
    middle = length // 2
    ids = torch.cat([text_ids[:, :middle], image_ids, text_ids[:, middle:]], dim=1)
    vision = processor.pixels([image] * rows)
    return {"input_ids": ids, **vision_inputs({"input_ids": ids, "vision": vision}, token_types)}


def is_vision_run(settings: dict) -> bool:
    """Whether a config's ``model`` settings train a vision-language model: LLaVA composed from a
    ``vision_tower``, or a VLM folder as ``pretrained_model_name_or_path``."""
    from xtune.hf.vision import is_vision_language

    if settings.get("vision_tower"):
        return True
    path = settings.get("pretrained_model_name_or_path")
    return isinstance(path, str) and is_vision_language(path, bool(settings.get("trust_remote_code")))


def trained_processor(settings: dict, tokenizer_path: str, template: str) -> VisionProcessor:
    """The processor a vision run trained with: the tokenizer (``<image>`` added for a composed LLaVA) with
    the run's chat template, and the VLM's or the vision tower's image processor.

    Raises:
        ConfigError: The model or vision tower cannot be loaded, or the template is unknown.
    """
    from xtune.dataset.templates import set_chat_template
    from xtune.hf.load import load_tokenizer
    from xtune.hf.vision import load_processor

    trust = bool(settings.get("trust_remote_code"))
    vision_tower = settings.get("vision_tower") or None
    if vision_tower is not None:  # LLaVA composed: the LM's tokenizer with <image> added
        processor = load_processor(tokenizer_path, vision_tower=vision_tower, trust_remote_code=trust)
    else:
        processor = load_processor(settings["pretrained_model_name_or_path"], trust_remote_code=trust)
        if tokenizer_path != settings["pretrained_model_name_or_path"]:
            processor.tokenizer = load_tokenizer(tokenizer_path, trust_remote_code=trust)
    set_chat_template(processor.tokenizer, template)
    return processor
