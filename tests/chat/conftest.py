"""A trained tiny LoRA run, converted and merged, for the chat tests."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.convert.runs import LORA, TrainedRun, train_run


@dataclass
class ChatModels:
    run: TrainedRun
    adapter: Path
    merged: Path


@pytest.fixture(scope="session")
def chat_models(tiny_llama, tmp_path_factory) -> ChatModels:
    from xtune.convert import merge_adapter, pth_to_hf

    root = tmp_path_factory.mktemp("chat")
    run = train_run(LORA, tiny_llama, root / "run")
    adapter = pth_to_hf(run.config, run.checkpoint, root / "adapter")
    merged = merge_adapter(run.base, adapter, root / "merged").save_dir
    return ChatModels(run, adapter, merged)
