"""Trained tiny runs shared by the conversion tests (each trains once per session, in seconds)."""

import pytest

from tests.convert.runs import FULL, LORA, train_run


@pytest.fixture(scope="session")
def lora_run(tiny_llama, tmp_path_factory):
    """A LoRA run of the tiny demo config on the tiny Llama."""
    return train_run(LORA, tiny_llama, tmp_path_factory.mktemp("lora_run"))


@pytest.fixture(scope="session")
def full_run(tiny_llama, tmp_path_factory):
    """A full fine-tuning run of the tiny demo config on the tiny Llama."""
    return train_run(FULL, tiny_llama, tmp_path_factory.mktemp("full_run"))


@pytest.fixture(scope="session")
def lora_adapter(lora_run, tmp_path_factory):
    """The LoRA run converted to a PEFT adapter folder."""
    from xtune.convert import pth_to_hf

    return pth_to_hf(lora_run.config, lora_run.checkpoint, tmp_path_factory.mktemp("adapter") / "hf")


from tests.vision_fixtures import vision_models  # noqa: E402, F401  (tiny VLM folders and images)
