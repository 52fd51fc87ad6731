"""Tiny random-init vision models of real architectures: a CLIP vision tower, LLaVA-1.5 and Qwen2.5-VL.

They share the tiny tokenizer of :mod:`xtune.testing.tiny_models` (with the image tokens each family
needs added) and use the families' own transformers classes and image processors, at toy size, so the
whole multimodal path (data, training, convert, chat) runs on a CPU in seconds::

    from xtune.testing.tiny_vision import make_tiny_clip, make_tiny_vlm

    vit = make_tiny_clip(tmp_path / "clip")  # compose with a tiny LM: model.vision_tower=vit
    vlm = make_tiny_vlm("llava", tmp_path / "llava")  # AutoModelForImageTextToText.from_pretrained(vlm)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, GenerationConfig

from xtune.errors import ConfigError
from xtune.testing.tiny_models import tiny_config, tiny_tokenizer_dir

TINY_IMAGE_SIZE = 32
"""Side of the tiny CLIP's square input: 4 x 4 patches of 8 pixels, so 16 image tokens per image."""
TINY_VLMS = ("llava", "qwen2_5_vl", "qwen3_vl")
"""Families :func:`make_tiny_vlm` builds (the ``model_type`` of each)."""

_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": 8,
    "projection_dim": 32,
}
# CLIP's own normalisation constants, so the tiny processor is the real one at a smaller size.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )


def make_tiny_clip(path: str | Path, *, seed: int = 0) -> Path:
    """Write a random-init tiny CLIP vision tower (``CLIPVisionModel``) and its image processor to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(**_CLIP)).to(torch.float32)
    model.save_pretrained(path)
    _clip_image_processor().save_pretrained(path)
    return path


def _tokenizer(extra: list[str]):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    return tokenizer


def make_tiny_vlm(arch: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write a random-init tiny vision-language model of family ``arch`` (see :data:`TINY_VLMS`) with its
    processor to ``path``: loadable with ``AutoModelForImageTextToText`` and ``AutoProcessor``.

    Raises:
        ConfigError: ``arch`` is not one of :data:`TINY_VLMS`.
    """
    if arch not in TINY_VLMS:
        raise ConfigError(f"make_tiny_vlm: unknown arch {arch!r}; expected one of {', '.join(TINY_VLMS)}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build = {"llava": _tiny_llava, "qwen2_5_vl": _tiny_qwen2_5_vl, "qwen3_vl": _tiny_qwen3_vl}[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = build()
    model = model.to(torch.float32)
    text = model.config.get_text_config()
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    template = tiny_tokenizer_dir() / "chat_template.jinja"
    if template.is_file() and not (path / "chat_template.jinja").exists():
        shutil.copyfile(template, path / "chat_template.jinja")
    return path


def _tiny_llava():
    from transformers import LlavaForConditionalGeneration

    from xtune.hf.vision import IMAGE_PLACEHOLDER, VisionProcessor, llava_config, llava_processor

    tokenizer = _tokenizer([IMAGE_PLACEHOLDER])
    config = llava_config(tiny_config("llama"), CLIPVisionConfig(**_CLIP), tokenizer.convert_tokens_to_ids("<image>"))
    parts = VisionProcessor(tokenizer, _clip_image_processor(), "llava", IMAGE_PLACEHOLDER)
    return LlavaForConditionalGeneration(config), llava_processor(parts, config)


def _tiny_qwen_vl(family: str, text_arch: str, rope: dict, vision: dict, patch: int):
    """A tiny Qwen-VL model of ``family`` over a tiny ``text_arch`` language model; ``patch``-pixel patches
    merged 2 x 2, at most 4 x 4 merged patches per image."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from xtune.hf.vision import VisionProcessor

    tokenizer = _tokenizer(_QWEN_TOKENS)
    ids = dict(zip(_QWEN_TOKENS, tokenizer.convert_tokens_to_ids(_QWEN_TOKENS)))
    text = tiny_config(text_arch).to_dict()
    # head_dim 16: the three multimodal RoPE sections (time, height, width) cover its 8 frequencies
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **rope}
    config = AutoConfig.for_model(
        family,
        text_config=text,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text["hidden_size"],
            "patch_size": patch,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **vision,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    merged = 2 * patch
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, min_pixels=merged * merged, max_pixels=4 * 4 * merged * merged
    )
    # transformers' Qwen-VL processors need torchvision (for videos): the two parts are saved on their own
    processor = VisionProcessor(tokenizer, image_processor, family, "<|image_pad|>")
    return AutoModelForImageTextToText.from_config(config), processor


def _tiny_qwen2_5_vl():
    return _tiny_qwen_vl("qwen2_5_vl", "qwen2", {}, {"window_size": 56, "fullatt_block_indexes": [1]}, patch=14)


def _tiny_qwen3_vl():
    # interleaved multimodal RoPE; an 8 x 8 grid of learned vision positions, interpolated per image
    vision = {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    return _tiny_qwen_vl("qwen3_vl", "qwen3", {"mrope_interleaved": True}, vision, patch=16)
