"""`xtune chat` with images: the answer is plain transformers' greedy answer for the same image and prompt."""

import builtins

import pytest
import torch

from tests.vision_fixtures import QUESTION, TOKENS, make_vlm_adapter, reference_answer
from xtune.chat.images import open_image
from xtune.cli import main

GREEDY = ["--temperature", "0", "--max-new-tokens", str(TOKENS)]


def _chat(capsys, *args) -> tuple[int, str, str]:
    status = main(["chat", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_image_prompt_equals_transformers_generate(vision_models, capsys, arch):
    folder = vision_models[arch]
    status, out, _ = _chat(capsys, folder, "--image", vision_models.red, "--prompt", QUESTION, *GREEDY)
    assert status == 0
    red = open_image(vision_models.red)
    # no <image> marker in the prompt: the image goes before the text, as training data without markers
    expected = reference_answer(folder, [{"role": "user", "content": "<image>" + QUESTION}], [red])
    assert out == expected + "\n" and expected
    # the pixels are read: another image gives another answer (same prompt)
    status, other, _ = _chat(capsys, folder, "--image", vision_models.blue, "--prompt", QUESTION, *GREEDY)
    assert status == 0 and other != out


def test_images_go_where_the_markers_are(vision_models, capsys):
    folder = vision_models["qwen2_5_vl"]
    prompt = "Compare <image> with <image> please"
    args = ["--image", vision_models.blue, "--image", vision_models.red, "--prompt", prompt, "--prompt", QUESTION]
    status, out, _ = _chat(capsys, folder, *args, *GREEDY)
    images = [open_image(vision_models.blue), open_image(vision_models.red)]
    first = reference_answer(folder, [{"role": "user", "content": prompt}], images)
    second = reference_answer(folder, [{"role": "user", "content": "<image><image>" + QUESTION}], images)
    assert status == 0 and out == f"{first}\n{second}\n"  # each --prompt gets the images


def test_adapter_on_a_vision_language_base(vision_models, capsys, tmp_path):
    folder = vision_models["llava"]
    adapter = make_vlm_adapter(folder, tmp_path / "adapter")
    args = ["--image", vision_models.red, "--prompt", QUESTION, *GREEDY]
    status, out, _ = _chat(capsys, folder, "--adapter", adapter, *args)
    red = open_image(vision_models.red)
    messages = [{"role": "user", "content": "<image>" + QUESTION}]
    expected = reference_answer(folder, messages, [red], adapter=adapter)
    assert status == 0 and out == expected + "\n"
    assert expected != reference_answer(folder, messages, [red])  # the adapter changes the answer


def test_interactive_image_command(vision_models, capsys, monkeypatch):
    folder = vision_models["llava"]
    _, one_shot, _ = _chat(capsys, folder, "--image", vision_models.red, "--prompt", QUESTION, *GREEDY)
    lines = iter(["/image /no/such.png", f"/image {vision_models.red}", QUESTION, "/exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    status, out, err = _chat(capsys, folder, *GREEDY)
    assert status == 0 and "/image PATH" in err
    assert "image not found: /no/such.png" in err and "added to your next message" in err
    assert out == one_shot  # streamed; the bad path was reported and the conversation went on


@pytest.mark.parametrize(
    "image, prompt, words",
    [
        ("missing", QUESTION, ["image not found", "missing.png"]),
        ("not_image", QUESTION, ["not_image.png", "not an image"]),
        ("truncated", QUESTION, ["truncated.png", "cannot be decoded"]),
        ("folder", QUESTION, ["is not a file"]),
        ("red", "<image> and <image>", ["2 <image> marker(s)", "1 image(s)"]),
        ("red", "<|image_pad|> hi", ["image token"]),
    ],
)
def test_bad_images_fail_clearly(vision_models, capsys, tmp_path, image, prompt, words):
    paths = {
        "missing": tmp_path / "missing.png",
        "not_image": tmp_path / "not_image.png",
        "truncated": tmp_path / "truncated.png",
        "folder": tmp_path,
        "red": vision_models.red,
    }
    paths["not_image"].write_text("plain text")
    paths["truncated"].write_bytes(vision_models.red.read_bytes()[:60])
    status, out, err = _chat(capsys, vision_models["qwen2_5_vl"], "--image", paths[image], "--prompt", prompt)
    last = err.strip().splitlines()[-1]
    assert status == 2 and not out
    assert last.startswith("xtune: error:") and all(word in last for word in words), last


def test_images_need_a_vision_language_model(tiny_llama, vision_models, capsys):
    status, _, err = _chat(capsys, tiny_llama, "--image", vision_models.red, "--prompt", QUESTION)
    assert status == 2 and "text-only model" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_qwen_gets_the_token_types_its_3d_positions_need(vision_models, arch):
    """Qwen-VL computes image positions from ``mm_token_type_ids`` (its processor returns them, training passes
    them); without them transformers gives image tokens text positions, a difference too small for the tiny
    model's greedy tokens to show, so the model's inputs are checked."""
    from xtune.chat import ChatSession, GenerationSettings
    from xtune.chat.loading import load_model_for_chat

    loaded = load_model_for_chat(str(vision_models[arch]), device="cpu")
    seen = []
    loaded.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    settings = GenerationSettings(max_new_tokens=2, temperature=0)
    session = ChatSession(loaded.model, loaded.tokenizer, [], settings=settings, processor=loaded.processor)
    session.ask(QUESTION, images=[open_image(vision_models.red)])
    first = seen[0]  # transformers encodes the images before the first forward
    assert first.get("mm_encoder_outputs") is not None
    assert int((first["input_ids"] == loaded.processor.image_token_id).sum()) > 0
    if arch == "qwen2_5_vl":
        types = first["mm_token_type_ids"]
        assert torch.equal(types.bool(), first["input_ids"] == loaded.processor.image_token_id)
    else:
        assert first.get("mm_token_type_ids") is None  # LLaVA's positions are the text's


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_bits_keeps_the_vision_tower_and_projector_unquantized(vision_models, monkeypatch, arch):
    """``--bits`` quantizes the language model only, as qlora training does (bitsandbytes itself needs a GPU, so
    the quantization config is captured on its way to transformers)."""
    from transformers import BitsAndBytesConfig

    import xtune.hf.quantization
    import xtune.hf.vision
    from xtune.chat.loading import load_model_for_chat
    from xtune.hf.vision import VISION_FAMILIES

    monkeypatch.setattr(
        xtune.hf.quantization, "bnb_config", lambda bits, dtype, **_: BitsAndBytesConfig(load_in_4bit=True)
    )
    seen = {}
    real = xtune.hf.vision.load_vision_model

    def load_without_bitsandbytes(path, quantization=None, **kwargs):
        seen["quantization"] = quantization
        return real(path, **kwargs)

    monkeypatch.setattr(xtune.hf.vision, "load_vision_model", load_without_bitsandbytes)
    chat = load_model_for_chat(str(vision_models[arch]), bits=4)
    family = VISION_FAMILIES[arch]
    assert seen["quantization"].llm_int8_skip_modules == [family.vision, *family.projectors, "lm_head"]
    assert chat.processor is not None
