"""Evaluation prompts belong to their data: a config whose data is switched does not ask the old questions."""

import pytest

from xtune.config import list_configs, load_config
from xtune.engine.hooks.evaluate_chat import EvaluateChatHook


def _hook_cfg(cfg) -> dict:
    return next(h for h in cfg.custom_hooks if h["type"] == "EvaluateChatHook")


def test_prompts_of_a_dataset_config_are_skipped_on_other_data():
    identity = _hook_cfg(load_config("tiny_llama_lora_identity_e3"))
    assert EvaluateChatHook(**{k: v for k, v in identity.items() if k != "type"}).inputs == ["Who are you?", "你是谁？"]
    switched = _hook_cfg(load_config("tiny_llama_lora_identity_e3", {"data_path": "alpaca_demo"}))
    assert EvaluateChatHook(**{k: v for k, v in switched.items() if k != "type"}).inputs == []
    # prompts given on the command line are the user's own: asked whatever the data
    own = _hook_cfg(
        load_config("tiny_llama_lora_identity_e3", {"data_path": "alpaca_demo", "evaluation_inputs": ["Hi?"]})
    )
    assert EvaluateChatHook(**{k: v for k, v in own.items() if k != "type"}).inputs == ["Hi?"]


@pytest.mark.parametrize("path", list_configs(), ids=lambda p: p.stem)
def test_every_shipped_config_asks_its_own_prompts(path):
    hook = _hook_cfg(load_config(path))
    if hook["evaluation_inputs"]:
        assert hook["inputs_for"] in (None, hook["data_path"]), path.stem
