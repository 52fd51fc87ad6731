"""The bitsandbytes configs qlora training and ``--bits`` chat ask for, checked without bitsandbytes."""

import sys
import types

import pytest
import torch

from xtune.errors import XtuneError
from xtune.hf.quantization import bnb_arguments, bnb_config


def test_four_bit_arguments_are_qlora_defaults_plus_the_config_and_the_model_dtype():
    assert bnb_arguments(4, "bf16") == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }
    settings = {"bnb_4bit_quant_type": "fp4", "bnb_4bit_quant_storage": "bfloat16", "bnb_4bit_compute_dtype": "x"}
    arguments = bnb_arguments(4, "fp16", settings)
    assert arguments["bnb_4bit_quant_type"] == "fp4" and arguments["bnb_4bit_quant_storage"] == "bfloat16"
    assert arguments["bnb_4bit_compute_dtype"] is torch.float16  # always the model's dtype
    assert bnb_arguments(8, "bf16") == {"load_in_8bit": True}
    with pytest.raises(ValueError, match="4 or 8 bits"):
        bnb_arguments(2, "bf16")


def test_no_gpu_or_no_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(XtuneError, match=r"^qlora needs a CUDA GPU: .* Use lora\.$"):
        bnb_config(4, "bf16", asked_by="qlora", fix="Use lora.")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when it is not installed
    with pytest.raises(XtuneError, match=r"^--bits 8 needs bitsandbytes: pip install bitsandbytes$"):
        bnb_config(8, "bf16", asked_by="--bits 8", fix="")


def test_the_config_transformers_gets(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    config = bnb_config(4, "bf16", {"bnb_4bit_quant_storage": "bfloat16"}, asked_by="qlora", fix="")
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype is torch.bfloat16 and config.bnb_4bit_quant_storage is torch.bfloat16
    assert bnb_config(8, "fp16", asked_by="--bits 8", fix="").load_in_8bit


class _Captured(Exception):
    pass


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine that looks like it has CUDA and bitsandbytes; loading stops at from_pretrained."""
    import xtune.chat.loading
    import xtune.model  # noqa: F401  (imported first: mmengine registers bitsandbytes' optimizers on import)
    from xtune.hf import load

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # mmengine's logger asks which GPU a rank uses
    seen = {}

    def capture(path, **kwargs):
        seen.update(kwargs)
        raise _Captured

    monkeypatch.setattr(load.AutoModelForCausalLM, "from_pretrained", capture)
    return seen


def test_qlora_training_loads_4_bit_onto_its_ranks_gpu(tiny_llama, fake_gpu, monkeypatch):
    from xtune.model import FinetuneModel

    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(_Captured):
        FinetuneModel(str(tiny_llama), finetune_type="qlora", quantization={"bnb_4bit_quant_type": "fp4"})
    config = fake_gpu["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype is torch.bfloat16 and fake_gpu["dtype"] is torch.bfloat16  # auto
    assert fake_gpu["device_map"] == {"": 3}


@pytest.mark.parametrize("bits", [4, 8])
def test_chat_bits_load_quantized(tiny_llama, fake_gpu, bits):
    from xtune.chat.loading import load_model_for_chat

    with pytest.raises(_Captured):
        load_model_for_chat(str(tiny_llama), bits=bits, device="auto")
    config = fake_gpu["quantization_config"]
    assert (config.load_in_4bit, config.load_in_8bit) == (bits == 4, bits == 8)
    assert fake_gpu["device_map"] == {"": "cuda"} and fake_gpu["dtype"] is torch.bfloat16
