"""`xtune convert pth_to_hf`: trained weights come out exactly, in folders plain transformers/peft load."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.convert.runs import LORA, base_logits, logits_of
from xtune.cli import main
from xtune.convert.checkpoint import training_dtype
from xtune.dataset.templates import TEMPLATES


def _convert(*args: str) -> int:
    return main(["convert", "pth_to_hf", *map(str, args)])


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if "xtune-tmp" in p.name or "xtune-old" in p.name]


def test_lora_checkpoint_becomes_an_adapter_plain_peft_loads(lora_run, tmp_path, capsys):
    save_dir = tmp_path / "adapter"
    assert _convert(lora_run.config, lora_run.checkpoint, save_dir) == 0
    assert capsys.readouterr().out.strip() == str(save_dir)
    settings = json.loads((save_dir / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(lora_run.base)
    assert settings["r"] == 16 and settings["peft_type"] == "LORA"
    assert (save_dir / "adapter_model.safetensors").is_file()
    assert "pretrained_model_name_or_path" in (save_dir / "xtune_config.py").read_text()

    base = AutoModelForCausalLM.from_pretrained(lora_run.base, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, save_dir).eval()
    logits = logits_of(adapted, lora_run.ids)
    assert (logits - lora_run.logits).abs().max() < 1e-5
    # training moved the adapter: the comparison above is not base vs base
    assert (base_logits(lora_run.base, lora_run.ids) - lora_run.logits).abs().max() > 1e-3
    tokenizer = AutoTokenizer.from_pretrained(save_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(lora_run.base).chat_template
    assert _leftovers(tmp_path) == []


def test_adapter_weights_equal_the_checkpoint(lora_run, lora_adapter):
    from xtune.engine.runner import load_checkpoint_file

    state = load_checkpoint_file(str(lora_run.checkpoint))["state_dict"]
    saved = load_file(lora_adapter / "adapter_model.safetensors")
    assert len(saved) == len(state) > 0
    for key, value in state.items():
        # llm.base_model.model.X.lora_A.default.weight -> base_model.model.X.lora_A.weight
        name = key.removeprefix("llm.").replace(".default.", ".")
        assert torch.equal(saved[name], value), key


def test_shipped_config_name_with_the_training_overrides(lora_run, tmp_path):
    options = [f"{key}={value!r}" for key, value in lora_run.options.items()]
    assert _convert(LORA, lora_run.checkpoint, tmp_path / "a", "--cfg-options", *options) == 0
    assert _convert(lora_run.config, lora_run.checkpoint, tmp_path / "b") == 0
    assert (
        load_file(tmp_path / "a" / "adapter_model.safetensors").keys()
        == load_file(tmp_path / "b" / "adapter_model.safetensors").keys()
    )


def test_builtin_template_is_saved_with_the_adapter(lora_run, tmp_path):
    options = [f"{key}={value!r}" for key, value in lora_run.options.items()]
    assert (
        _convert(LORA, lora_run.checkpoint, tmp_path / "a", "--cfg-options", *options, "prompt_template='default'") == 0
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert tokenizer.chat_template == TEMPLATES["default"].jinja
    assert "prompt_template = 'default'" in (tmp_path / "a" / "xtune_config.py").read_text()


def test_full_checkpoint_becomes_a_model_plain_transformers_loads(full_run, tmp_path):
    save_dir = tmp_path / "model"
    assert _convert(full_run.config, full_run.checkpoint, save_dir, "--max-shard-size", "1MB") == 0
    assert len(list(save_dir.glob("model-*.safetensors"))) > 1 and (save_dir / "model.safetensors.index.json").is_file()
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "xtune_config.py"):
        assert (save_dir / name).is_file(), name
    config = json.loads((save_dir / "config.json").read_text())
    assert config["dtype"] == "float32" and config["use_cache"] is True
    model = AutoModelForCausalLM.from_pretrained(save_dir).eval()
    assert torch.equal(logits_of(model, full_run.ids), full_run.logits)
    assert (base_logits(full_run.base, full_run.ids) - full_run.logits).abs().max() > 1e-3
    generation = json.loads((save_dir / "generation_config.json").read_text())
    assert AutoTokenizer.from_pretrained(save_dir).eos_token_id in [generation["eos_token_id"]] + (
        generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else []
    )


def test_full_to_bf16_and_to_pytorch_bin(full_run, tmp_path):
    assert _convert(full_run.config, full_run.checkpoint, tmp_path / "bf16", "--dtype", "bf16") == 0
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {value.dtype for value in weights.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"

    assert _convert(full_run.config, full_run.checkpoint, tmp_path / "bin", "--no-safe-serialization") == 0
    assert not list((tmp_path / "bin").glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bin").eval()
    assert torch.equal(logits_of(model, full_run.ids), full_run.logits)


def test_default_dtype_is_the_training_dtype(full_run):
    from mmengine.config import Config

    cfg = Config({"model": {"type": "SupervisedFinetune", "dtype": "auto"}})
    assert training_dtype(cfg, {"w": torch.zeros(2, dtype=torch.bfloat16)}) == "bf16"
    assert training_dtype(Config({"model": {"type": "X", "dtype": "fp16"}}), {"w": torch.zeros(2)}) == "fp16"


def test_freeze_run_keeps_frozen_base_weights(tiny_llama, tmp_path):
    from tests.convert.runs import FULL, train_run

    run = train_run(
        FULL,
        tiny_llama,
        tmp_path / "run",
        **{"model.finetune_type": "freeze", "model.freeze": {"trainable_layers": 1}},
    )
    assert _convert(run.config, run.checkpoint, tmp_path / "model") == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert (logits_of(model, run.ids) - run.logits).abs().max() < 1e-5
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    ours = model.state_dict()
    assert torch.equal(ours["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(ours["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])


def test_existing_save_dir_needs_overwrite(lora_run, tmp_path, capsys):
    save_dir = tmp_path / "out"
    save_dir.mkdir()
    (save_dir / "keep.txt").write_text("mine")
    assert _convert(lora_run.config, lora_run.checkpoint, save_dir) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in save_dir.iterdir()] == ["keep.txt"]
    assert _convert(lora_run.config, lora_run.checkpoint, save_dir, "--overwrite") == 0
    assert (save_dir / "adapter_config.json").is_file() and not (save_dir / "keep.txt").exists()
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ bad inputs
def _fails_cleanly(config, checkpoint, tmp_path, capsys, *words: str, extra=()) -> None:
    save_dir = tmp_path / "deep" / "out"
    assert _convert(config, checkpoint, save_dir, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("xtune: error: ") and "Traceback" not in "\n".join(err)
    for word in words:
        assert word in err[-1], err[-1]
    assert not (tmp_path / "deep").exists()  # not even the parent folder it would have made


def test_missing_checkpoint(lora_run, tmp_path, capsys):
    _fails_cleanly(lora_run.config, tmp_path / "iter_9.pth", tmp_path, capsys, "not found", "iter_9.pth")


def test_truncated_checkpoint(lora_run, tmp_path, capsys):
    data = lora_run.checkpoint.read_bytes()
    truncated = tmp_path / "iter_cut.pth"
    truncated.write_bytes(data[: len(data) // 2])
    _fails_cleanly(lora_run.config, truncated, tmp_path, capsys, "iter_cut.pth", "truncated")


@pytest.mark.parametrize("kind", ["plain_state_dict", "pickled_object", "text"])
def test_foreign_file(kind, lora_run, tmp_path, capsys):
    import argparse

    path = tmp_path / "foreign.pth"
    if kind == "plain_state_dict":
        torch.save({"model.embed_tokens.weight": torch.zeros(2)}, path)
    elif kind == "pickled_object":
        torch.save({"state_dict": {}, "args": argparse.Namespace(a=1)}, path)
    else:
        path.write_text("not a checkpoint")
    _fails_cleanly(lora_run.config, path, tmp_path, capsys, "foreign.pth")


def test_checkpoint_of_another_finetuning_type(full_run, lora_run, tmp_path, capsys):
    _fails_cleanly(lora_run.config, full_run.checkpoint, tmp_path, capsys, "does not fit", "lora")
    _fails_cleanly(full_run.config, lora_run.checkpoint, tmp_path, capsys, "does not fit", "full")


def test_checkpoint_of_other_lora_settings(lora_run, tmp_path, capsys):
    _fails_cleanly(
        lora_run.config,
        lora_run.checkpoint,
        tmp_path,
        capsys,
        "(16, 64)",
        "(8, 64)",
        extra=["--cfg-options", "model.lora.r=8"],
    )


def test_bad_options(lora_run, tmp_path, capsys):
    _fails_cleanly(
        lora_run.config,
        lora_run.checkpoint,
        tmp_path,
        capsys,
        "--max-shard-size",
        extra=["--max-shard-size", "lots"],
    )
    _fails_cleanly(
        lora_run.config,
        lora_run.checkpoint,
        tmp_path,
        capsys,
        "no_such_key",
        extra=["--cfg-options", "no_such_key=1"],
    )


def test_unknown_and_deepspeed_folders(lora_run, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    _fails_cleanly(lora_run.config, folder, tmp_path, capsys, "not a checkpoint xtune can read")
    (folder / "global_step9").mkdir()
    (folder / "global_step9" / "mp_rank_00_model_states.pt").write_bytes(b"")
    _fails_cleanly(lora_run.config, folder, tmp_path, capsys, "DeepSpeed")


def test_a_folder_reader_plugs_in(lora_run, lora_adapter, tmp_path, monkeypatch):
    """A checkpoint folder format needs one reader in FOLDER_READERS, nothing else."""
    from xtune.convert.checkpoint import FOLDER_READERS, FolderReader, load_trainable_state

    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copyfile(lora_run.checkpoint, folder / "weights.pth")
    reader = FolderReader(
        "test", lambda p: (p / "weights.pth").is_file(), lambda p: load_trainable_state(p / "weights.pth")
    )
    monkeypatch.setattr("xtune.convert.checkpoint.FOLDER_READERS", [*FOLDER_READERS, reader])
    assert _convert(lora_run.config, folder, tmp_path / "out") == 0
    assert (
        load_file(tmp_path / "out" / "adapter_model.safetensors").keys()
        == load_file(lora_adapter / "adapter_model.safetensors").keys()
    )


def test_dora_run_round_trip(tiny_llama, tmp_path):
    from tests.convert.runs import train_run

    run = train_run(LORA, tiny_llama, tmp_path / "run", **{"model.finetune_type": "dora"})
    assert _convert(run.config, run.checkpoint, tmp_path / "adapter") == 0
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert (logits_of(adapted, run.ids) - run.logits).abs().max() < 1e-5
    assert (base_logits(tiny_llama, run.ids) - run.logits).abs().max() > 1e-3


def test_qlora_config_converts_on_the_cpu(lora_run, lora_adapter, tmp_path):
    """A qlora run's adapter has the names and shapes of a lora one: no GPU is needed to convert it."""
    options = [f"{key}={value!r}" for key, value in lora_run.options.items()]
    qlora = "tiny_llama_qlora_identity_e3"
    assert _convert(qlora, lora_run.checkpoint, tmp_path / "a", "--cfg-options", *options) == 0
    ours = load_file(tmp_path / "a" / "adapter_model.safetensors")
    reference = load_file(lora_adapter / "adapter_model.safetensors")
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def test_config_naming_another_base_warns(lora_run, tmp_path, capsys):
    moved = tmp_path / "moved_base"
    shutil.copytree(lora_run.base, moved)
    options = [f"{key}={value!r}" for key, value in lora_run.options.items()]
    options.append(f"pretrained_model_name_or_path={str(moved)!r}")
    assert _convert(LORA, lora_run.checkpoint, tmp_path / "a", "--cfg-options", *options) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "pretrained_model_name_or_path" in err and str(moved) in err
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(moved)


def test_adapter_in_another_dtype(lora_run, tmp_path):
    assert _convert(lora_run.config, lora_run.checkpoint, tmp_path / "a", "--dtype", "bf16") == 0
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert {value.dtype for value in weights.values()} == {torch.bfloat16}


def test_convert_without_a_conversion_shows_help(capsys):
    assert main(["convert"]) == 2
    out = capsys.readouterr().out
    assert "pth_to_hf" in out and "merge" in out
