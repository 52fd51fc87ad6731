"""Vision-language loading: composing LLaVA from a ViT and an LM, and the processor's image-token rules."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaProcessor

import xtune.model.attention  # noqa: F401  (registers xtune_varlen)
from xtune.errors import ConfigError
from xtune.hf.vision import compose_llava, load_processor, load_vision_model
from xtune.testing.tiny_models import make_tiny_model
from xtune.testing.tiny_vision import make_tiny_clip, make_tiny_vlm


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return make_tiny_model("llama", root / "lm"), make_tiny_clip(root / "clip")


def _logits(model, processor, sizes, token_types: bool = False):
    images = [Image.new("RGB", (w, h), (200, 30 * i, 10)) for i, (h, w) in enumerate(sizes)]
    text = "look " + " and ".join(processor.image_text(n) for n in processor.token_counts(sizes)) + " here"
    ids = processor.tokenizer(text, return_tensors="pt").input_ids
    extra = {"mm_token_type_ids": (ids == processor.image_token_id).long()} if token_types else {}
    with torch.no_grad():
        return ids, model(input_ids=ids, **processor.pixels(images), **extra).logits


def test_composed_llava_is_the_lm_and_vit_and_saves_as_plain_llava(parts, tmp_path):
    lm_path, vit_path = parts

    model = compose_llava(lm_path, vit_path, attn_implementation="xtune_varlen")
    processor = load_processor(lm_path, vision_tower=vit_path)
    assert not any(p.is_meta for p in model.parameters())
    # the language model keeps the LM's attention; the ViT keeps sdpa (segments of text mean nothing to it)
    assert model.model.language_model.config._attn_implementation == "xtune_varlen"
    assert model.model.vision_tower.config._attn_implementation == "sdpa"
    plain = make_tiny_model("llama", tmp_path / "again")  # same seed: the same LM weights
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(plain)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # text only: the composed model is the LM
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-6)
    ids, before = _logits(model, processor, [(40, 40), (20, 50)])
    assert int((ids == model.config.image_token_id).sum()) == 2 * 16
    model.save_pretrained(tmp_path / "out")
    processor.save_pretrained(tmp_path / "out")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    _, after = _logits(loaded, load_processor(tmp_path / "out"), [(40, 40), (20, 50)])
    assert torch.equal(before, after)
    # the same seed gives the same projector: a run and its conversion agree before weights are loaded
    again = compose_llava(lm_path, vit_path)
    assert torch.equal(
        again.model.multi_modal_projector.linear_1.weight, model.model.multi_modal_projector.linear_1.weight
    )


def test_llava_token_count_matches_transformers_processor(tmp_path):
    path = make_tiny_vlm("llava", tmp_path / "llava")
    ours = load_processor(path)
    theirs = LlavaProcessor.from_pretrained(path)
    image = Image.new("RGB", (50, 30), (0, 0, 255))
    expanded = theirs(text=["a <image> b"], images=[image], return_tensors="pt")["input_ids"]
    assert ours.token_counts([(30, 50)]) == [int((expanded == ours.image_token_id).sum())]


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_vl_token_count_follows_the_patch_grid(tmp_path, arch):
    path = make_tiny_vlm(arch, tmp_path / "qwen")
    processor = load_processor(path)
    model = load_vision_model(path)
    sizes = [(56, 56), (30, 100), (112, 112)]
    counts = processor.token_counts(sizes)
    grid = processor.pixels([Image.new("RGB", (w, h)) for h, w in sizes])["image_grid_thw"]
    assert counts == [int(g.prod()) // 4 for g in grid]
    ids, logits = _logits(model, processor, sizes, token_types=True)  # the model accepts exactly that many tokens
    assert logits.shape[1] == ids.shape[1]


def test_a_text_model_has_no_processor(parts):
    with pytest.raises(ConfigError, match="not a vision-language model"):
        load_processor(parts[0])


def test_markers_expand_in_order_and_mismatches_are_errors(tmp_path):
    from xtune.errors import DataError
    from xtune.hf.vision import expand_image_markers

    processor = load_processor(make_tiny_vlm("qwen2_5_vl", tmp_path / "qwen"))
    messages = [{"role": "user", "content": "<image> vs <image>?"}, {"role": "assistant", "content": "same"}]
    out = expand_image_markers(messages, [2, 3], processor)
    pad = "<|image_pad|>"
    assert out[0]["content"] == f"<|vision_start|>{pad * 2}<|vision_end|> vs <|vision_start|>{pad * 3}<|vision_end|>?"
    assert out[1] is messages[1]
    with pytest.raises(DataError, match="2 <image> marker"):
        expand_image_markers(messages, [2], processor)
    with pytest.raises(DataError, match="assistant message"):
        expand_image_markers([{"role": "assistant", "content": "<image>"}], [1], processor)
