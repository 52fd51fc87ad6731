"""Shared fixtures: a private dataset cache per test session, tiny models, small data files."""

import json
import os
from pathlib import Path

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
