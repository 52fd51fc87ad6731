"""`xtune convert merge`: the merged model is base + adapter, standalone, and bad adapters write nothing."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.convert.runs import logits_of
from xtune.cli import main
from xtune.paths import MODEL_DIR
from xtune.testing import make_tiny_model


def _merge(*args) -> int:
    return main(["convert", "merge", *map(str, args)])


@pytest.fixture(scope="module")
def merged(lora_run, lora_adapter, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("merged") / "model"
    assert _merge(lora_run.base, lora_adapter, save_dir, "--max-shard-size", "1MB") == 0
    return save_dir


def test_merged_model_gives_the_training_logits(lora_run, merged):
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert (logits_of(model, lora_run.ids) - lora_run.logits).abs().max() < 1e-5
    assert not any("lora" in name for name in model.state_dict())
    assert len(list(merged.glob("model-*.safetensors"))) > 1  # sharded as asked
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float32"  # the base's dtype
    assert (merged / "xtune_config.py").is_file()


def test_merged_model_has_the_adapters_tokenizer(lora_adapter, merged):
    ours = AutoTokenizer.from_pretrained(merged)
    assert ours.chat_template == AutoTokenizer.from_pretrained(lora_adapter).chat_template
    assert ours.get_vocab() == AutoTokenizer.from_pretrained(lora_adapter).get_vocab()


def test_verify_prints_the_difference(lora_run, lora_adapter, tmp_path, capsys):
    assert _merge(lora_run.base, lora_adapter, tmp_path / "m", "--verify") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("verify:"))
    difference = float(line.split("max logit diff ")[1].split()[0])
    assert difference < 1e-4


def test_verify_failure_writes_nothing(lora_run, lora_adapter, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("xtune.convert.merge", fromlist=["x"]).VERIFY_TOLERANCE, "fp32", -1.0)
    assert _merge(lora_run.base, lora_adapter, tmp_path / "m", "--verify") == 2
    assert "nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bf16_merge_stays_close(lora_run, lora_adapter, tmp_path, capsys):
    assert _merge(lora_run.base, lora_adapter, tmp_path / "m", "--dtype", "bf16", "--verify") == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"


def _fails_cleanly(base, adapter, tmp_path, capsys, *words, extra=()) -> None:
    assert _merge(base, adapter, tmp_path / "deep" / "m", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("xtune: error: ") and "Traceback" not in "\n".join(err)
    for word in words:
        assert word in err[-1], err[-1]
    assert not (tmp_path / "deep").exists()


def test_missing_adapter(lora_run, tmp_path, capsys):
    _fails_cleanly(lora_run.base, tmp_path / "nope", tmp_path, capsys, "not found", "pth_to_hf")
    _fails_cleanly(lora_run.base, lora_run.base, tmp_path, capsys, "no adapter_config.json", "full model")


def test_adapter_for_a_model_of_other_shapes(lora_adapter, tmp_path, capsys):
    # the shipped tiny_llama: hidden size 128 and 4 layers; the adapter was trained on hidden size 64
    _fails_cleanly(MODEL_DIR / "tiny_llama", lora_adapter, tmp_path, capsys, "does not fit", "trained on")


def test_adapter_for_a_model_without_its_target_modules(lora_adapter, tmp_path, capsys):
    phi3 = make_tiny_model("phi3", tmp_path / "phi3")  # fused qkv_proj/gate_up_proj: no q_proj, no up_proj
    _fails_cleanly(phi3, lora_adapter, tmp_path, capsys, "does not fit")


def test_cuda_asked_for_without_a_gpu(lora_run, lora_adapter, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails_cleanly(lora_run.base, lora_adapter, tmp_path, capsys, "--device cpu", extra=["--device", "cuda"])


def test_base_model_by_its_short_name(lora_run, lora_adapter, tmp_path, capsys, monkeypatch):
    # The shipped tiny_llama is named like the configs name it; the adapter's shapes decide the rest.
    import xtune.config.loader as loader

    monkeypatch.setattr(loader, "MODEL_DIR", lora_run.base.parent)
    assert _merge(lora_run.base.name, lora_adapter, tmp_path / "merged") == 0
    assert (tmp_path / "merged" / "config.json").is_file()
