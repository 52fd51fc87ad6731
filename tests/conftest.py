"""Shared fixtures: a private dataset cache per test session, tiny models, small data files, a trained chat model."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from xtune.testing.tiny_models import make_tiny_model


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Processed datasets go to a temporary cache, never the user's ~/.cache."""
    os.environ["XTUNE_CACHE"] = str(tmp_path_factory.mktemp("xtune_cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random-init Llama (2 layers, hidden 64) with the shipped tiny tokenizer."""
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny_llama") / "model")


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory) -> Path:
    """16 alpaca rows of different lengths, some with input."""
    rows = []
    for i in range(16):
        rows.append(
            {
                "instruction": f"Question number {i}: what is {i} plus {i}?" + " Explain." * (i % 4),
                "input": "Show the steps." if i % 3 == 0 else "",
                "output": f"{i} plus {i} is {2 * i}." + " That is the answer." * (i % 5),
            }
        )
    path = tmp_path_factory.mktemp("data") / "alpaca16.json"
    path.write_text(json.dumps(rows))
    return path


@dataclass
class ChatModels:
    """A trained tiny LoRA run, converted to an adapter and merged: what chat and serve tests talk to."""

    run: Any  # tests.convert.runs.TrainedRun
    adapter: Path
    merged: Path


@pytest.fixture(scope="session")
def chat_models(tiny_llama, tmp_path_factory) -> ChatModels:
    from tests.convert.runs import LORA, train_run
    from xtune.convert import merge_adapter, pth_to_hf

    root = tmp_path_factory.mktemp("chat")
    run = train_run(LORA, tiny_llama, root / "run")
    adapter = pth_to_hf(run.config, run.checkpoint, root / "adapter")
    merged = merge_adapter(run.base, adapter, root / "merged").save_dir
    return ChatModels(run, adapter, merged)
