"""`xtune convert pth_to_hf` of vision-language runs: a composed LLaVA becomes one plain
LlavaForConditionalGeneration folder (adapters merged), a VLM-folder run an adapter or a full folder; each
with processor files, giving the training model's logits on an image+prompt in plain transformers."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from tests.convert.vision_runs import LORA, image, vision_run
from tests.vision_fixtures import QUESTION
from xtune.cli import main
from xtune.convert import pth_to_hf
from xtune.hf.vision import compose_llava
from xtune.testing.tiny_models import make_tiny_model
from xtune.testing.tiny_vision import make_tiny_clip, make_tiny_vlm

COMPOSED = {
    "pretrain": {"finetune_type": "full", "freeze_llm": True},  # only the projector trains
    "lora": {"finetune_type": "lora", "lora": LORA, "vision_lora": True},
    "full": {"finetune_type": "full"},
}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_parts")
    return {
        "lm": make_tiny_model("llama", root / "lm"),
        "clip": make_tiny_clip(root / "clip"),
        "qwen2_5_vl": make_tiny_vlm("qwen2_5_vl", root / "qwen"),
        "llava": make_tiny_vlm("llava", root / "llava"),
    }


def _token_types(model, ids: torch.Tensor) -> dict:
    """What transformers' Qwen2.5-VL processor returns beside the ids (LLaVA: nothing)."""
    if model.config.model_type != "qwen2_5_vl":
        return {}
    return {"mm_token_type_ids": (ids == model.config.image_token_id).int()}


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    ids = batch["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"], **batch["vision"]}
    return model.eval()(**inputs, **_token_types(model, ids)).logits


@pytest.mark.parametrize("stage", list(COMPOSED))
def test_composed_llava_becomes_a_plain_llava_folder(parts, tmp_path, stage):
    model = {"pretrained_model_name_or_path": str(parts["lm"]), "vision_tower": str(parts["clip"]), **COMPOSED[stage]}
    run = vision_run(model, tmp_path / "run")
    out = pth_to_hf(run.config, run.checkpoint, tmp_path / "hf")
    assert not (out / "adapter_config.json").exists()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json"):
        assert (out / name).is_file(), name
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora" in key or "modules_to_save" in key for key in loaded.state_dict())
    assert (_logits(loaded, run.batch) - run.logits).abs().max() < 1e-5
    untrained = compose_llava(parts["lm"], parts["clip"])  # what the run started from
    assert (_logits(untrained, run.batch) - run.logits).abs().max() > 1e-3  # so the check above can fail

    # the processor files alone, through transformers' LlavaProcessor: <image> expanded as training did
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "LlavaProcessor"
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>What is it?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[image(5, (50, 40))], return_tensors="pt", add_special_tokens=False)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(inputs["input_ids"][0], run.batch["input_ids"][0, :length])
    with torch.no_grad():
        plain = loaded(**inputs).logits
    assert (plain - run.logits[:, :length]).abs().max() < 1e-5
    # stops at the training template's end of turn, as xtune chat does
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


def test_chat_on_the_converted_llava_answers_as_the_checkpoint(parts, tmp_path, capsys, vision_models):
    model = {"pretrained_model_name_or_path": str(parts["lm"]), "vision_tower": str(parts["clip"]), **COMPOSED["lora"]}
    run = vision_run(model, tmp_path / "run")
    out = pth_to_hf(run.config, run.checkpoint, tmp_path / "hf")
    capsys.readouterr()
    ask = ["--image", str(vision_models.red), "--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", "8"]
    assert main(["chat", str(out), *ask]) == 0
    converted = capsys.readouterr().out
    assert main(["chat", "--config", str(run.config), "--checkpoint", str(run.checkpoint), *ask]) == 0
    assert capsys.readouterr().out == converted and converted.strip()


def test_vlm_folder_lora_becomes_an_adapter_with_processor_files(parts, tmp_path, capsys, vision_models):
    base = parts["qwen2_5_vl"]
    settings = {"pretrained_model_name_or_path": str(base), "finetune_type": "lora", "lora": LORA}
    run = vision_run(settings, tmp_path, lr=1e-3)  # a gentle step: the answers stay longer than an EOS
    out = pth_to_hf(run.config, run.checkpoint, tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "preprocessor_config.json").is_file()
    assert not (out / "model.safetensors").exists()
    untrained = _logits(AutoModelForImageTextToText.from_pretrained(base), run.batch)
    assert (untrained - run.logits).abs().max() > 1e-3  # training moved it: the comparison below can fail
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out)
    assert (_logits(adapted, run.batch) - run.logits).abs().max() < 1e-5
    assert AutoTokenizer.from_pretrained(out).chat_template == run.processor.tokenizer.chat_template

    # merge folds it in; chat on the merged folder, on base + adapter and on the checkpoint agree
    assert main(["convert", "merge", str(base), str(out), str(tmp_path / "merged"), "--verify"]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert (_logits(merged, run.batch) - run.logits).abs().max() < 1e-5
    capsys.readouterr()
    ask = ["--image", str(vision_models.red), "--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", "8"]
    answers = []
    for source in ([str(tmp_path / "merged")], [str(base), "--adapter", str(out)]):
        assert main(["chat", *source, *ask]) == 0
        answers.append(capsys.readouterr().out)
    assert main(["chat", "--config", str(run.config), "--checkpoint", str(run.checkpoint), *ask]) == 0
    answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] == answers[2] and answers[0].strip()


def test_vlm_folder_full_run_becomes_a_full_folder(parts, tmp_path):
    base = parts["llava"]
    settings = {"pretrained_model_name_or_path": str(base), "finetune_type": "full", "freeze_vision_tower": False}
    run = vision_run(settings, tmp_path)
    out = pth_to_hf(run.config, run.checkpoint, tmp_path / "hf")
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    assert (_logits(loaded, run.batch) - run.logits).abs().max() < 1e-5
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "LlavaProcessor"


def test_a_finetune_run_converts_without_its_pretrain_stage(parts, tmp_path):
    """The finetune stage starts from the pretrain stage's projector (projector=); its checkpoint holds the
    trained projector, so converting it needs the pretrain files no more."""
    composed = {"pretrained_model_name_or_path": str(parts["lm"]), "vision_tower": str(parts["clip"])}
    pretrain = vision_run({**composed, **COMPOSED["pretrain"]}, tmp_path / "pretrain")
    run = vision_run({**composed, **COMPOSED["lora"], "projector": str(pretrain.checkpoint)}, tmp_path / "finetune")
    pretrain.checkpoint.unlink()
    out = pth_to_hf(run.config, run.checkpoint, tmp_path / "hf")
    assert (_logits(AutoModelForImageTextToText.from_pretrained(out), run.batch) - run.logits).abs().max() < 1e-5
