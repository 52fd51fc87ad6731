"""Qwen3-VL's DeepStack mergers (``model.visual.deepstack_merger_list``) are part of its projector: they follow
``freeze_projector`` (not the vision tower), a pretrain stage trains and saves them with ``merger``, and
``model.projector=`` loads them back. Checked against plain transformers/peft on the tiny Qwen3-VL."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests.model.test_vision_finetune import (
    LORA,
    _assert_same_losses,
    _assert_same_weights,
    _batch,
    _image,
    _sample,
    _train_ours,
    _train_reference,
)
from xtune.checkpoint.files import write_pointer
from xtune.errors import ConfigError
from xtune.hf.vision import load_processor
from xtune.model import SupervisedFinetune
from xtune.testing.tiny_vision import make_tiny_vlm

MERGER, DEEPSTACK = "model.visual.merger", "model.visual.deepstack_merger_list"


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    path = make_tiny_vlm("qwen3_vl", tmp_path_factory.mktemp("qwen3_vl") / "model")
    return path, load_processor(path)


def _plain(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


def _names(model, *prefixes: str) -> set[str]:
    """Parameter names of a plain transformers model under any of ``prefixes`` (module paths)."""
    return {name for name, _ in model.named_parameters() if name.startswith(tuple(p + "." for p in prefixes))}


def _trainable(model) -> set[str]:
    return {name.removeprefix("llm.") for name, p in model.named_parameters() if p.requires_grad}


def _steps(processor) -> list[dict]:
    samples = [
        _sample(processor, "what is this?", [_image(0, (56, 56))], "a blue square"),
        _sample(processor, "and these", [_image(1, (30, 100)), _image(2, (56, 84))], "two shapes"),
        _sample(processor, "plain text", [], "yes"),
    ]
    return [_batch(processor, samples[:2]), _batch(processor, samples[1:]), _batch(processor, samples[::-1])]


def test_pretrain_stage_trains_the_merger_and_the_deepstack_mergers_and_nothing_else(qwen3):
    path, processor = qwen3
    ours = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", freeze_llm=True)
    reference = _plain(path)
    projector = _names(reference, MERGER, DEEPSTACK)
    assert _names(reference, DEEPSTACK) and _names(reference, MERGER)  # the tiny model has both
    assert _trainable(ours) == projector
    # the stage's checkpoint is its projector, deepstack mergers included
    assert {key.removeprefix("llm.") for key in ours.state_dict()} == projector

    # the same training as a plain transformers loop that trains exactly those parameters
    for name, param in reference.named_parameters():
        param.requires_grad_(name in projector)
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    batches = _steps(processor)
    ours_losses = _train_ours(ours, batches)
    their_losses = _train_reference(reference, batches, {processor.image_token_id: 1})
    _assert_same_losses(ours_losses, their_losses)
    _assert_same_weights(ours, reference, start)
    for name, param in ours.named_parameters():  # every deepstack merger weight learned; nothing else moved
        moved = not torch.equal(param, start[name.removeprefix("llm.")])
        assert moved == (name.removeprefix("llm.") in projector), name


def test_deepstack_mergers_follow_freeze_projector_not_the_vision_tower(qwen3):
    path, _ = qwen3
    reference = _plain(path)
    vision, projector = _names(reference, "model.visual"), _names(reference, MERGER, DEEPSTACK)
    frozen = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", freeze_projector=True)
    assert _trainable(frozen) == {name for name, _ in reference.named_parameters()} - vision
    tower = SupervisedFinetune(
        str(path), finetune_type="full", dtype="fp32", freeze_llm=True, freeze_vision_tower=False,
        freeze_projector=True,
    )  # fmt: skip
    assert _trainable(tower) == vision - projector

    # LoRA: adapters on the language model and (vision_lora) the ViT's blocks, never on a projector; the
    # projector trains in full as modules_to_save, each deepstack merger on its own
    lora = SupervisedFinetune(str(path), finetune_type="lora", dtype="fp32", lora=LORA, vision_lora=True)
    targeted = lora.llm.base_model.targeted_module_names
    assert any(name.startswith("model.visual.blocks.") for name in targeted)
    assert not any(name.startswith((MERGER, DEEPSTACK)) for name in targeted)
    assert lora.llm.peft_config["default"].modules_to_save == [MERGER, f"{DEEPSTACK}.0"]
    saved = {name for name in _trainable(lora) if "lora_" not in name}
    assert {name.replace(".modules_to_save.default.", ".").removeprefix("base_model.model.") for name in saved} == (
        projector
    )
    frozen_lora = SupervisedFinetune(str(path), finetune_type="lora", dtype="fp32", lora=LORA, freeze_projector=True)
    assert not frozen_lora.llm.peft_config["default"].modules_to_save
    assert all("lora_" in name for name in _trainable(frozen_lora))


def _trained_projector(pretrain) -> dict[str, torch.Tensor]:
    """Move every projector weight of a pretrain-stage model far from its start; returns them by plain name."""
    with torch.no_grad():
        for param in pretrain.parameters():
            if param.requires_grad:
                param.add_(torch.linspace(-1, 1, param.numel()).reshape(param.shape))
    return {name.removeprefix("llm."): p.detach().clone() for name, p in pretrain.named_parameters() if p.requires_grad}


def _projector_in(model) -> dict[str, torch.Tensor]:
    """The projector weights a LoRA model trains (its modules_to_save copies), by plain name."""
    return {
        name.removeprefix("llm.base_model.model.").replace(".modules_to_save.default.", "."): p.detach()
        for name, p in model.named_parameters()
        if ".modules_to_save.default." in name
    }


def test_projector_checkpoint_round_trips_the_deepstack_mergers(qwen3, tmp_path):
    path, _ = qwen3
    pretrain = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", freeze_llm=True)
    trained = _trained_projector(pretrain)
    assert any(name.startswith(DEEPSTACK) for name in trained)
    work_dir = tmp_path / "pretrain"
    work_dir.mkdir()
    torch.save({"state_dict": pretrain.state_dict(), "meta": {}}, work_dir / "iter_2.pth")
    write_pointer(work_dir, str(work_dir / "iter_2.pth"))
    base = _names(_plain(path), MERGER, DEEPSTACK)
    for source in (work_dir / "iter_2.pth", work_dir):
        model = SupervisedFinetune(str(path), finetune_type="lora", dtype="fp32", lora=LORA, projector=str(source))
        loaded = _projector_in(model)
        assert loaded.keys() == trained.keys() == base
        for name, value in trained.items():
            assert torch.equal(loaded[name], value), (source, name)


def test_a_projector_checkpoint_without_the_deepstack_mergers_is_refused(qwen3, tmp_path):
    """A projector from a stage that did not train them (a Qwen2.5-VL-style merger only) would leave the
    deepstack mergers untrained beside a trained merger: refused, naming what is missing."""
    path, _ = qwen3
    pretrain = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", freeze_llm=True)
    merger_only = {key: value for key, value in pretrain.state_dict().items() if DEEPSTACK not in key}
    torch.save({"state_dict": merger_only, "meta": {}}, tmp_path / "merger_only.pth")
    with pytest.raises(ConfigError, match=rf"lacks \['{DEEPSTACK}\.0\.linear_fc1\.bias'"):
        SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", projector=str(tmp_path / "merger_only.pth"))
