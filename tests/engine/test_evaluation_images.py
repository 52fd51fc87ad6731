"""EvaluateChatHook's evaluation_images: a vision run's evaluation prompts are asked about images, as
`xtune chat --image` asks them."""

import json
from types import SimpleNamespace

import pytest

from tests.vision_fixtures import QUESTION, vision_models  # noqa: F401
from xtune.chat.loading import load_model_for_chat
from xtune.cli import main
from xtune.engine.hooks.evaluate_chat import EvaluateChatHook
from xtune.errors import ConfigError
from xtune.stages import build_objective


def _runner(loaded, tmp_path, processor=True):
    model = SimpleNamespace(llm=loaded.model, objective=build_objective(None))
    dataset = SimpleNamespace(tokenizer=loaded.tokenizer, processor=loaded.processor if processor else None)
    return SimpleNamespace(
        model=model, train_dataloader=SimpleNamespace(dataset=dataset), rank=0, iter=9, work_dir=str(tmp_path)
    )


def test_prompts_are_asked_about_their_images(vision_models, tmp_path, capsys):  # noqa: F811
    folder = vision_models["llava"]
    hook = EvaluateChatHook(
        [QUESTION, QUESTION], max_new_tokens=8, evaluation_images=[str(vision_models.red), str(vision_models.blue)]
    )
    hook.after_train(_runner(load_model_for_chat(str(folder), device="cpu"), tmp_path))
    records = [json.loads(line) for line in (tmp_path / "eval_chat.jsonl").read_text().splitlines()]
    capsys.readouterr()  # the hook's log lines
    assert [r["image"] for r in records] == [str(vision_models.red), str(vision_models.blue)]
    for record, image in zip(records, [vision_models.red, vision_models.blue]):
        args = ["chat", str(folder), "--image", str(image), "--prompt", QUESTION, "--temperature", "0"]
        assert main([*args, "--max-new-tokens", "8"]) == 0
        assert record["answer"] == capsys.readouterr().out.strip() and record["answer"]
    assert records[0]["answer"] != records[1]["answer"]


def test_bad_evaluation_images_fail_when_the_hook_is_built(vision_models, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="2 images for 3 evaluation_inputs"):
        EvaluateChatHook(["a", "b", "c"], evaluation_images=[str(vision_models.red)] * 2)
    with pytest.raises(ConfigError, match="image not found"):
        EvaluateChatHook(["a"], evaluation_images=str(tmp_path / "missing.png"))
    with pytest.raises(ConfigError, match="web URL"):
        EvaluateChatHook(["a"], evaluation_images="https://example.com/view.jpg")
    assert len(EvaluateChatHook(["a", "b"], evaluation_images=str(vision_models.red)).images) == 2  # one for all


def test_images_for_a_text_run_are_refused(tiny_llama, vision_models, tmp_path):  # noqa: F811
    hook = EvaluateChatHook(["a"], evaluation_images=str(vision_models.red))
    with pytest.raises(ConfigError, match="text only"):
        hook.after_train(_runner(load_model_for_chat(str(tiny_llama), device="cpu"), tmp_path, processor=False))


def test_the_config_knob_reaches_the_hook(vision_models):  # noqa: F811
    from xtune.config import load_config

    options = {"evaluation_inputs": [QUESTION], "evaluation_images": str(vision_models.red)}
    cfg = load_config("llava_tiny_llama_tiny_clip_full_mllm_demo_e30", options)
    hook = next(h for h in cfg.custom_hooks if h["type"] == "EvaluateChatHook")
    assert hook["evaluation_images"] == str(vision_models.red)
    built = EvaluateChatHook(**{k: v for k, v in hook.items() if k != "type"})
    assert [path for path, _ in built.images] == [str(vision_models.red)]
