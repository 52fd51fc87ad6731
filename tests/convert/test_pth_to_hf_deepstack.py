"""Conversion keeps Qwen3-VL's DeepStack mergers with the projector: a pretrain run becomes a transformers folder
holding them (and serves as ``model.projector=``), a LoRA run with a trained projector becomes an adapter whose
``modules_to_save`` carries them, and `xtune convert merge` folds them into a folder that plain transformers loads
with the training model's logits."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from tests.convert.vision_runs import LORA, vision_run
from xtune.cli import main
from xtune.convert import pth_to_hf
from xtune.model import SupervisedFinetune
from xtune.testing.tiny_vision import make_tiny_vlm

MERGER, DEEPSTACK = "model.visual.merger", "model.visual.deepstack_merger_list"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny Qwen3-VL, its pretrain run, and a LoRA run (projector trained too) started from that projector.

    The LoRA run reads the pretrain checkpoint from a copy that is deleted once it has trained: converting it
    needs the projector it saved, not the pretrain stage's files."""
    root = tmp_path_factory.mktemp("deepstack")
    base = make_tiny_vlm("qwen3_vl", root / "qwen3_vl")
    pretrain = vision_run(
        {"pretrained_model_name_or_path": str(base), "finetune_type": "full", "freeze_llm": True}, root / "pretrain"
    )
    stage1 = root / "stage1" / pretrain.checkpoint.name
    stage1.parent.mkdir()
    shutil.copyfile(pretrain.checkpoint, stage1)
    settings = {"pretrained_model_name_or_path": str(base), "finetune_type": "lora", "lora": LORA}
    lora = vision_run({**settings, "projector": str(stage1)}, root / "lora", lr=1e-3)
    stage1.unlink()
    return base, pretrain, lora


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    ids = batch["input_ids"]
    types = (ids == model.config.image_token_id).int()  # what transformers' Qwen processor returns beside the ids
    inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"], "mm_token_type_ids": types}
    return model.eval()(**inputs, **batch["vision"]).logits


def _deepstack(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(DEEPSTACK + ".")}


def _trained_deepstack(run) -> dict[str, torch.Tensor]:
    """The run's trained deepstack merger weights (peft's modules_to_save copy for LoRA), by plain name."""
    found = {}
    for name, param in run.model.named_parameters():
        plain = name.removeprefix("llm.").removeprefix("base_model.model.")
        if param.requires_grad and plain.startswith(DEEPSTACK + ".") and "lora_" not in plain:
            found[plain.replace(".modules_to_save.default.", ".")] = param.detach()
    return found


def _assert_holds_trained_deepstack(model, run, base) -> None:
    theirs, trained, start = _deepstack(model), _trained_deepstack(run), _deepstack(base)
    assert theirs.keys() == trained.keys() == start.keys() and trained
    for key, value in trained.items():
        assert torch.equal(theirs[key], value), key
    assert any(not torch.equal(value, start[key]) for key, value in trained.items())  # training moved them


def test_pretrain_run_becomes_a_folder_holding_the_deepstack_mergers(runs, tmp_path):
    base, pretrain, _ = runs
    out = pth_to_hf(pretrain.config, pretrain.checkpoint, tmp_path / "hf")
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    untrained = AutoModelForImageTextToText.from_pretrained(base)
    _assert_holds_trained_deepstack(loaded, pretrain, untrained)
    assert (_logits(loaded, pretrain.batch) - pretrain.logits).abs().max() < 1e-5
    assert (_logits(untrained, pretrain.batch) - pretrain.logits).abs().max() > 1e-3  # so the check above can fail

    # the converted folder as the next stage's model.projector: merger and deepstack mergers load from it
    model = SupervisedFinetune(str(base), finetune_type="full", dtype="fp32", freeze_llm=True, projector=str(out))
    for key, value in pretrain.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert any(DEEPSTACK in key for key in pretrain.model.state_dict())


def test_lora_run_with_a_trained_projector_keeps_the_deepstack_mergers(runs, tmp_path):
    base, _, lora = runs
    state = torch.load(lora.checkpoint, weights_only=True)["state_dict"]
    for module in (MERGER, f"{DEEPSTACK}.0"):
        assert any(f"{module}.modules_to_save.default." in key for key in state), module

    out = pth_to_hf(lora.config, lora.checkpoint, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["modules_to_save"]) == {MERGER, f"{DEEPSTACK}.0"}
    untrained = AutoModelForImageTextToText.from_pretrained(base)
    assert (_logits(untrained, lora.batch) - lora.logits).abs().max() > 1e-3  # so the checks below can fail
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out)
    assert (_logits(adapted, lora.batch) - lora.logits).abs().max() < 1e-5

    # merged: a plain transformers folder with the trained deepstack mergers and the training model's logits
    assert main(["convert", "merge", str(base), str(out), str(tmp_path / "merged"), "--verify"]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert not any("lora" in key or "modules_to_save" in key for key in merged.state_dict())
    _assert_holds_trained_deepstack(merged, lora, untrained)
    assert (_logits(merged, lora.batch) - lora.logits).abs().max() < 1e-5
