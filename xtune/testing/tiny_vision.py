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
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from xtune.hf.vision import IMAGE_PLACEHOLDER, llava_config

    tokenizer = _tokenizer([IMAGE_PLACEHOLDER])
    config = llava_config(tiny_config("llama"), CLIPVisionConfig(**_CLIP), tokenizer.convert_tokens_to_ids("<image>"))
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=_CLIP["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=tokenizer.chat_template,
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(config), processor


def _tiny_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from xtune.hf.vision import VisionProcessor

    tokenizer = _tokenizer(_QWEN_TOKENS)
    ids = dict(zip(_QWEN_TOKENS, tokenizer.convert_tokens_to_ids(_QWEN_TOKENS)))
    text = tiny_config("qwen2").to_dict()
    # head_dim 16: the three multimodal RoPE sections (time, height, width) cover its 8 frequencies
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # 28-pixel patches after merging; at most 4 x 4 of them (64 image tokens) per image
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=4 * 4 * 28 * 28)
    # transformers' Qwen2_5_VLProcessor needs torchvision (for videos): the two parts are saved on their own
    processor = VisionProcessor(tokenizer, image_processor, "qwen2_5_vl", "<|image_pad|>")
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _tiny_qwen3_vl():
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from xtune.hf.vision import VisionProcessor

    tokenizer = _tokenizer(_QWEN_TOKENS)
    ids = dict(zip(_QWEN_TOKENS, tokenizer.convert_tokens_to_ids(_QWEN_TOKENS)))
    text = tiny_config("qwen3").to_dict()
    # interleaved multimodal RoPE over head_dim 16's 8 frequencies (time, height, width)
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    config = Qwen3VLConfig(
        text_config=text,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,  # an 8 x 8 grid of learned positions, interpolated per image
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # 32-pixel patches after merging; at most 4 x 4 of them per image
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, min_pixels=32 * 32, max_pixels=4 * 4 * 32 * 32
    )
    processor = VisionProcessor(tokenizer, image_processor, "qwen3_vl", "<|image_pad|>")
    return Qwen3VLForConditionalGeneration(config), processor
