"""Tiny vision-language models and images for the chat and serve tests (import the fixtures you use)."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

QUESTION = "What colour is it?"
TOKENS = 8


@dataclass
class VisionModels:
    """Tiny random-init VLM folders by family, and images on disk."""

    models: dict[str, Path]
    red: Path  # PNG, 40 x 30
    blue: Path  # JPEG, 60 x 50

    def __getitem__(self, arch: str) -> Path:
        return self.models[arch]


@pytest.fixture(scope="session")
def vision_models(tmp_path_factory) -> VisionModels:
    from PIL import Image

    from xtune.testing.tiny_vision import TINY_VLMS, make_tiny_vlm

    root = tmp_path_factory.mktemp("vlms")
    models = {arch: make_tiny_vlm(arch, root / arch) for arch in TINY_VLMS}
    Image.new("RGB", (40, 30), (220, 20, 20)).save(root / "red.png")
    Image.new("RGB", (60, 50), (20, 20, 220)).save(root / "blue.jpg", quality=95)
    return VisionModels(models, root / "red.png", root / "blue.jpg")


def make_vlm_adapter(folder, out, target: str = "language_model") -> Path:
    """A LoRA adapter on the attention of one part (``language_model``, or the vision tower's module name)
    of the VLM in ``folder``, with random (non-zero) weights, so that it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=rf".*{target}.*\.(q_proj|v_proj|qkv)",
        init_lora_weights=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        get_peft_model(model, config).save_pretrained(out)
    return Path(out)


def reference_answer(folder, messages: list[dict], images: list, adapter=None, max_new_tokens: int = TOKENS) -> str:
    """Plain transformers: the chat template over ``messages`` (``<image>`` markers in the text), image
    tokens expanded by transformers' own LlavaProcessor (LLaVA) or by Qwen2-VL's rule (one token per 2 x 2
    merged patches of the processor's grid: transformers' Qwen processor needs torchvision), greedy.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if config.model_type == "llava":
        from transformers import LlavaProcessor

        processor = LlavaProcessor.from_pretrained(folder)
        inputs = dict(processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False))
    else:
        image_processor = AutoImageProcessor.from_pretrained(folder)
        inputs = dict(image_processor(images=images, return_tensors="pt"))
        for grid in inputs["image_grid_thw"]:
            pads = "<|image_pad|>" * (int(grid.prod()) // 4)
            text = text.replace("<image>", "<|vision_start|>" + pads + "<|vision_end|>", 1)
        inputs["input_ids"] = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        # what transformers' Qwen2.5-VL processor returns beside the ids: the 3-D positions are computed from it
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == config.image_token_id).int()
    inputs.pop("attention_mask", None)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = inputs["input_ids"]
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    stops.append(model.generation_config.eos_token_id)
    with torch.no_grad():
        out = model.eval().generate(
            **inputs,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
