"""The dtype/device table every loader uses, and that training, chat and convert follow it alike."""

import pytest
import torch
from mmengine.config import Config

from xtune.errors import ConfigError, XtuneError
from xtune.hf.dtypes import DTYPE_NAMES, check_dtype, dtype_name, resolve_device, resolve_dtype, torch_dtype


def _machine(monkeypatch, gpu: bool, bf16: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


# (dtype, device, training, machine: None = no GPU / "bf16" / "fp16" GPU) -> resolved
TABLE = [
    ("auto", None, True, None, "fp32"),
    ("auto", None, True, "bf16", "bf16"),
    ("auto", None, True, "fp16", "fp32"),  # fp16 weights cannot be trained with loss scaling
    ("auto", "cuda", False, "bf16", "bf16"),
    ("auto", "cuda:1", False, "fp16", "fp16"),
    ("auto", "cpu", False, "bf16", "fp32"),  # a GPU is present but the model runs on the CPU
    ("auto", "cpu", True, None, "fp32"),
    ("bf16", None, True, None, "bf16"),
    ("fp16", "cpu", False, None, "fp16"),
    ("fp32", "cuda", False, "bf16", "fp32"),
]


@pytest.mark.parametrize("dtype, device, training, gpu, expected", TABLE)
def test_the_dtype_table(monkeypatch, dtype, device, training, gpu, expected):
    _machine(monkeypatch, gpu is not None, gpu == "bf16")
    assert resolve_dtype(dtype, device=device, training=training) == expected


@pytest.mark.parametrize("bad", ["float8", "bfloat16", "FP32", "", None, 16])
def test_a_bad_dtype_is_one_error_naming_the_knob_and_the_values(bad):
    expected = f"model.dtype must be one of auto, bf16, fp16, fp32; got '{bad}'."
    with pytest.raises(ConfigError) as caught:
        resolve_dtype(bad, knob="model.dtype")
    assert str(caught.value) == expected
    with pytest.raises(ConfigError, match="--dtype must be one of auto, bf16, fp16, fp32"):
        check_dtype(bad, "--dtype")


def test_devices(monkeypatch):
    _machine(monkeypatch, gpu=False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(XtuneError, match="--device cuda:1: this machine has no CUDA GPU. Use --device cpu."):
        resolve_device("cuda:1")
    _machine(monkeypatch, gpu=True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_names_and_torch_dtypes_round_trip():
    for name in DTYPE_NAMES[1:]:
        assert dtype_name(torch_dtype(name)) == name
        assert dtype_name(str(torch_dtype(name)).removeprefix("torch.")) == name  # a config's spelling
    assert torch_dtype("bf16") is torch.bfloat16
    assert dtype_name(torch.float64) is None and dtype_name(None) is None and dtype_name(torch.int8) is None


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_training_chat_and_convert_resolve_the_same_dtype(tiny_llama, dtype):
    """The same ``dtype`` value gives the same weights dtype wherever the model is loaded (on the CPU)."""
    from xtune.chat.loading import load_model_for_chat
    from xtune.convert.checkpoint import training_dtype
    from xtune.convert.merge import load_base
    from xtune.model import FinetuneModel

    expected = torch.float32 if dtype == "auto" else torch_dtype(dtype)  # tiny_llama records fp32
    trained = FinetuneModel(str(tiny_llama), finetune_type="full", dtype=dtype).llm
    chat = load_model_for_chat(str(tiny_llama), template="chatml", device="cpu", dtype=dtype).model
    cfg = Config({"model": {"type": "SupervisedFinetune", "dtype": dtype}})
    converted = training_dtype(cfg, {"llm.w": torch.zeros(2, dtype=expected)})  # pth_to_hf's choice
    merged = load_base(tiny_llama, converted)  # merge's: the base's own for auto
    for model in (trained, chat, merged):
        assert {p.dtype for p in model.parameters()} == {expected}
    assert torch_dtype(converted) == expected


def test_every_path_names_its_own_knob_for_a_bad_dtype(tiny_llama, tmp_path):
    from xtune.chat.loading import load_model_for_chat
    from xtune.convert import merge_adapter, pth_to_hf
    from xtune.model import FinetuneModel

    with pytest.raises(ConfigError, match="^model.dtype must be one of auto, bf16, fp16, fp32; got 'half'"):
        FinetuneModel(str(tiny_llama), finetune_type="full", dtype="half")
    with pytest.raises(ConfigError, match="^--dtype must be one of auto, bf16, fp16, fp32; got 'half'"):
        load_model_for_chat(str(tiny_llama), template="chatml", device="cpu", dtype="half")
    with pytest.raises(ConfigError, match="^--dtype must be one of"):
        pth_to_hf("cfg.py", "ckpt.pth", tmp_path / "out", dtype="half")
    with pytest.raises(ConfigError, match="^--dtype must be one of"):
        merge_adapter(tiny_llama, tmp_path / "adapter", tmp_path / "merged", dtype="half")


def test_the_optimizer_and_deepspeed_follow_the_table(monkeypatch):
    from xtune.engine.deepspeed import config_values
    from xtune.engine.optim import DtypeOptimWrapper

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    _machine(monkeypatch, gpu=False)
    assert type(DtypeOptimWrapper(optimizer, dtype="auto")).__name__ == "XtuneOptimWrapper"
    assert config_values(Config({"model": {"dtype": "auto"}}))["dtype"] == "fp32"
    _machine(monkeypatch, gpu=True, bf16=True)
    assert config_values(Config({"model": {"dtype": "auto"}}))["dtype"] == "bf16"
    with pytest.raises(ConfigError, match="^optim_wrapper.dtype must be one of"):
        DtypeOptimWrapper(optimizer, dtype="half")
