"""save_hf_at_end writes what `xtune convert pth_to_hf` would, into WORK_DIR/hf."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from xtune.testing.training import PARITY_OPTIONS, train

pytestmark = pytest.mark.slow


def test_save_hf_at_end_writes_a_loadable_adapter(tiny_llama, alpaca_file, tmp_path):
    options = {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(tiny_llama),
        "data_path": str(alpaca_file),
        "data_format": "alpaca",
        "max_epochs": 1,
        "batch_size": 4,
        "lr": 1e-2,
        "save_hf_at_end": True,
    }
    assert train("tiny_llama_lora_identity_e3", tmp_path, options) == 0
    adapter = tmp_path / "hf"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, adapter)(ids).logits
    assert (after - before).abs().max() > 1e-4  # the trained adapter, not a fresh one


def test_save_hf_at_end_is_off_by_default(tiny_llama, alpaca_file, tmp_path):
    options = {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(tiny_llama),
        "data_path": str(alpaca_file),
        "data_format": "alpaca",
        "max_epochs": 1,
        "batch_size": 8,
    }
    assert train("tiny_llama_lora_identity_e3", tmp_path, options) == 0
    assert not (tmp_path / "hf").exists()
