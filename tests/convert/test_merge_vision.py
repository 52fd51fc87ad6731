"""`xtune convert merge` on vision-language models: the merged folder is base + adapter on an image+prompt,
loads in plain transformers with its processor, and `xtune chat` on it answers as base + --adapter."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from tests.vision_fixtures import QUESTION, make_vlm_adapter
from xtune.chat.images import open_image
from xtune.cli import main
from xtune.convert.vision import verification_inputs
from xtune.hf.vision import load_processor
from xtune.model.vision import token_type_ids

# the part of each family a vision adapter targets: LLaVA's CLIP tower, Qwen's ViT blocks
VISION_PART = {"llava": "vision_tower", "qwen2_5_vl": "visual"}


def _inputs(folder, image) -> dict:
    """An image+prompt through the folder's own processor files (transformers' LlavaProcessor for LLaVA)."""
    processor = load_processor(folder)
    text = "look " + processor.image_text(processor.token_counts([(image.height, image.width)])[0]) + " " + QUESTION
    ids = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return {"input_ids": ids, **processor.pixels([image])}


@torch.no_grad()
def _logits(model, inputs) -> torch.Tensor:
    return model.eval()(**inputs).logits


PARTS = [("llava", "language_model"), ("qwen2_5_vl", "language_model"), *VISION_PART.items()]


@pytest.mark.parametrize("arch, part", PARTS)
def test_merged_vlm_is_base_plus_adapter(vision_models, tmp_path, capsys, arch, part):
    base = vision_models[arch]
    adapter = make_vlm_adapter(base, tmp_path / "adapter", target=part)
    assert main(["convert", "merge", str(base), str(adapter), str(tmp_path / "merged"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("max logit diff ")[1].split()[0]) < 1e-4
    merged = tmp_path / "merged"
    image = open_image(vision_models.red)
    inputs = _inputs(base, image)
    expected = _logits(PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter), inputs)
    loaded = AutoModelForImageTextToText.from_pretrained(merged)
    assert type(loaded).__name__ == type(AutoModelForImageTextToText.from_pretrained(base)).__name__
    assert not any("lora" in name for name in loaded.state_dict())
    assert (_logits(loaded, inputs) - expected).abs().max() < 1e-5
    assert (_logits(AutoModelForImageTextToText.from_pretrained(base), inputs) - expected).abs().max() > 1e-3
    # the processor files: the same tokenizer and image processor as the base
    assert AutoTokenizer.from_pretrained(merged).get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    assert AutoImageProcessor.from_pretrained(merged).to_dict() == AutoImageProcessor.from_pretrained(base).to_dict()


def test_chat_on_the_merged_vlm_answers_as_base_plus_adapter(vision_models, tmp_path, capsys):
    from transformers import LlavaProcessor

    base = vision_models["llava"]
    adapter = make_vlm_adapter(base, tmp_path / "adapter")
    assert main(["convert", "merge", str(base), str(adapter), str(tmp_path / "merged")]) == 0
    assert LlavaProcessor.from_pretrained(tmp_path / "merged").patch_size == 8  # AutoProcessor's LLaVA files
    capsys.readouterr()
    common = ["--image", str(vision_models.red), "--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", "8"]
    assert main(["chat", str(tmp_path / "merged"), *common]) == 0
    merged_answer = capsys.readouterr().out
    assert main(["chat", str(base), "--adapter", str(adapter), *common]) == 0
    assert capsys.readouterr().out == merged_answer and merged_answer.strip()


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl", "qwen3_vl"])
def test_verification_inputs_hold_one_image_per_row(vision_models, arch):
    processor = load_processor(vision_models[arch])
    model = AutoModelForImageTextToText.from_pretrained(vision_models[arch])
    image_id = processor.image_token_id
    text = torch.full((2, 32), image_id)  # random ids that hit the image token are replaced
    inputs = verification_inputs(processor, text, token_types=token_type_ids(model))
    count = processor.token_counts([(48, 64)])[0]
    assert [int((row == image_id).sum()) for row in inputs["input_ids"]] == [count, count]
    # Qwen-VL families get the per-token modality their 3-D positions come from, as in training
    if arch.startswith("qwen"):
        assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image_id).int())
    else:
        assert "mm_token_type_ids" not in inputs
    assert _logits(model, inputs).shape[:2] == inputs["input_ids"].shape  # the model takes them
