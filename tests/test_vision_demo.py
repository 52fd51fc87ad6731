"""The CPU image demo, end to end: the projector pretrain stage, then the finetune stage that starts from its
work dir, on the shipped tiny CLIP + tiny_llama and the generated shapes; the result answers colour questions
about the images.

Both configs run as shipped (only the work dirs are set). A question is asked the way ``xtune chat --image``
asks it: the template over the expanded ``<image>`` marker, the image processor's pixels, greedy decoding.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image

from xtune.checkpoint.files import read_pointer
from xtune.config import load_config
from xtune.convert.checkpoint import build_trained_model, read_checkpoint
from xtune.hf.vision import expand_image_markers, load_processor
from xtune.paths import DATA_DIR
from xtune.testing.training import train

pytestmark = pytest.mark.slow
PRETRAIN = "llava_tiny_llama_tiny_clip_pretrain_llava_pretrain_demo_e20"
FINETUNE = "llava_tiny_llama_tiny_clip_full_mllm_demo_e30"
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vision_demo")
    assert train(PRETRAIN, root / "pretrain", {}) == 0
    assert train(FINETUNE, root / "finetune", {"projector": str(root / "pretrain")}) == 0
    return root / "pretrain", root / "finetune"


def _model(work: Path, config: str, options: dict | None = None):
    cfg = load_config(str(work / f"{config}.py"), options)
    return build_trained_model(cfg, read_checkpoint(read_pointer(work)).state), cfg


def colour_answers(model, cfg) -> list[tuple[str, str]]:
    """(expected colour, greedy answer) for every demo image."""
    processor = load_processor(cfg.pretrained_model_name_or_path, vision_tower=cfg.vision_tower)
    answers = []
    for colour in COLOURS:
        for shape in SHAPES:
            image = Image.open(DATA_DIR / "vision_demo" / "images" / f"{colour}_{shape}.png").convert("RGB")
            counts = processor.token_counts([(image.height, image.width)])
            messages = expand_image_markers(
                [{"role": "user", "content": "<image>What colour is the shape?"}], counts, processor
            )
            ids = processor.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            with torch.no_grad():
                out = model.llm.generate(input_ids=ids, **processor.pixels([image]), max_new_tokens=6, do_sample=False)
            answers.append((colour, processor.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)))
    return answers


def test_pretrain_checkpoints_hold_only_the_projector(runs):
    pretrain, _ = runs
    state = read_checkpoint(read_pointer(pretrain)).state
    assert state and all(".multi_modal_projector." in key for key in state)


def test_the_finetuned_demo_answers_colour_questions_about_its_images(runs):
    pretrain, finetune = runs
    trained = colour_answers(*_model(finetune, FINETUNE))
    right = sum(colour in answer.lower() for colour, answer in trained)
    assert right >= 10, trained  # of 12 images; chance is 3
    # before the finetune stage (the pretrained projector, the LM as shipped) it does not answer them
    before, cfg = _model(pretrain, PRETRAIN)
    untrained = sum(colour in answer.lower() for colour, answer in colour_answers(before, cfg))
    assert untrained <= 4


def test_the_converted_demo_answers_them_in_xtune_chat(runs, tmp_path, capsys):
    """The user's path: `xtune convert pth_to_hf` of the finetune run, then `xtune chat FOLDER --image`; the
    folder is a plain LLaVA (no xtune needed to load it) that answers as the training model did."""
    from transformers import AutoModelForImageTextToText

    from xtune.chat import ChatSession, GenerationSettings
    from xtune.chat.images import open_image
    from xtune.chat.loading import load_model_for_chat
    from xtune.chat.stopping import template_stop_words
    from xtune.cli import main

    _, finetune = runs
    out = tmp_path / "hf"
    assert main(["convert", "pth_to_hf", str(finetune / f"{FINETUNE}.py"), str(read_pointer(finetune)), str(out)]) == 0
    assert type(AutoModelForImageTextToText.from_pretrained(out)).__name__ == "LlavaForConditionalGeneration"
    loaded = load_model_for_chat(str(out), device="cpu")
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    words = template_stop_words(loaded.tokenizer, loaded.template)
    session = ChatSession(loaded.model, loaded.tokenizer, words, settings=settings, processor=loaded.processor)
    answers = []
    for colour in COLOURS:
        for shape in SHAPES:
            session.reset()
            image = open_image(DATA_DIR / "vision_demo" / "images" / f"{colour}_{shape}.png")
            answers.append((colour, session.ask("What colour is the shape?", images=[image])))
    assert sum(colour in answer.lower() for colour, answer in answers) >= 10, answers
    capsys.readouterr()
    red = DATA_DIR / "vision_demo" / "images" / "red_circle.png"
    ask = ["--image", str(red), "--prompt", "What colour is the shape?", "--temperature", "0", "--max-new-tokens", "6"]
    assert main(["chat", str(out), *ask]) == 0
    assert capsys.readouterr().out.strip() == answers[0][1]
