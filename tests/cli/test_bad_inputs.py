"""Bad inputs through the CLI: each is one line ``xtune: error: ...``, exit 2, no traceback, the message
names the key/file/value, and nothing is written.

Config problems are found before any model, tokenizer or data is loaded, so most cases run in-process
through ``main()`` in about a second; a handful run as real ``python -m xtune`` subprocesses, and the
data cases go through ``check-dataset`` with small files.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtune.cli import main
from xtune.paths import CONFIG_DIR

TINY = "tiny_llama_lora_identity_e3"
FULL = "tiny_llama_full_identity_e3"
CPU_ONLY = not torch.cuda.is_available()


def _one_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert "Traceback" not in text
    errors = [line for line in lines if line.startswith("xtune: error: ")]
    assert len(errors) == 1, text
    return errors[0]


def train_error(capsys, tmp_path: Path, *options: str, config: str = TINY, extra: tuple = ()) -> str:
    """Run ``xtune train`` in-process; assert exit 2, one error line, no work dir; return the line."""
    work = tmp_path / "work"
    argv = ["train", config, "--work-dir", str(work), *extra]
    if options:
        argv += ["--cfg-options", *options]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert not work.exists(), "a refused run must not create its work dir"
    return line


# ----------------------------------------------------------------------------- knob values and keys

# (options, what the message must name)
BAD_OPTIONS = [
    (["lr=-1"], ["lr=-1", "number > 0"]),
    (["lr=0"], ["lr=0", "number > 0"]),
    (["lr=1e-5e"], ["lr=1e-5e", "not a Python literal"]),
    (["lr='fast'"], ["lr='fast'"]),
    (["batch_size=0"], ["batch_size=0", ">= 1"]),
    (["batch_size=1.5"], ["batch_size=1.5", "whole number"]),
    (["accumulative_counts=0"], ["accumulative_counts=0", ">= 1"]),
    (["max_epochs=0"], ["max_epochs=0"]),
    (["max_epochs=-2"], ["max_epochs=-2"]),
    (["warmup_ratio=1.5"], ["warmup_ratio=1.5", "from 0 to 1"]),
    (["warmup_ratio=-0.1"], ["warmup_ratio=-0.1"]),
    (["save_steps=0"], ["save_steps=0"]),
    (["save_total_limit=0"], ["save_total_limit=0", "-1 to keep all"]),
    (["max_length=1"], ["max_length=1"]),
    (["pack_to_max_length='yes'"], ["pack_to_max_length='yes'", "True or False"]),
    (["dtype='fp8'"], ["dtype='fp8'", "bf16"]),
    (["data_format='xml'"], ["data_format='xml'", "alpaca"]),
    (["max_norm=0"], ["max_norm=0"]),
    (["betas=(0.9,)"], ["betas=(0.9,)"]),
    (["model.lora.r=0"], ["model.lora.r=0", ">= 1"]),
    (["model.lora.lora_dropout=1.0"], ["model.lora.lora_dropout=1.0"]),
    (["model.finetune_type='lora2'"], ["model.finetune_type='lora2'", "qlora"]),
    (["optim_wrapper.optimizer.lr=-3"], ["optim_wrapper.optimizer.lr=-3"]),
    (["optim_wrapper.accumulative_counts=0"], ["optim_wrapper.accumulative_counts=0"]),
    (["train_dataloader.batch_size=0"], ["train_dataloader.batch_size=0"]),
    (["train_cfg.max_epochs=None"], ["train_cfg", "neither max_epochs nor max_iters"]),
    (["train_cfg.max_iters=0"], ["train_cfg.max_iters=0"]),
    (["param_scheduler=[dict(type=1"], ["param_scheduler=[dict(type=1", "not a Python literal", "never closed"]),
    (["param_scheduler=[dict(type=1)]"], ["param_scheduler[0]", "type="]),
    (["param_scheduler=5"], ["param_scheduler[0]=5"]),
    (["lrr=1"], ["'lrr'", "did you mean lr"]),
    (["model.lora.rr=8"], ["'model.lora.rr'", "model.lora has no key 'rr'", "did you mean r"]),
    (["optim_wrapper.optimizer.lrr=1"], ["'optim_wrapper.optimizer.lrr'", "did you mean lr"]),
    (["model.freeze.trainable_layer=2"], ["'model.freeze.trainable_layer'", "trainable_layers"]),
    (["param_scheduler.5.end=1"], ["'param_scheduler.5.end'", "list of 2"]),
    (["train_dataloader.dataset.max_length=5"], ["train_dataloader.dataset", "knob"]),
    (["lr.value=1"], ["'lr.value'", "not a dict"]),
]


@pytest.mark.parametrize("options,named", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_option_is_one_clear_error(options, named, capsys, tmp_path):
    line = train_error(capsys, tmp_path, *options)
    for text in named:
        assert text in line, line


def test_every_problem_is_reported_together(capsys, tmp_path):
    line = train_error(
        capsys, tmp_path, "lr=0", "batch_size=0", "accumulative_counts=0", "save_steps=0", "warmup_ratio=2"
    )
    assert "5 problems" in line
    for text in ("lr=0", "batch_size=0", "accumulative_counts=0", "save_steps=0", "warmup_ratio=2"):
        assert text in line


def test_all_unknown_keys_are_reported_together(capsys, tmp_path):
    line = train_error(capsys, tmp_path, "lrr=1", "model.lora.rr=8", "lr=1e-5e")
    assert "3 problems" in line and "'lrr'" in line and "'model.lora.rr'" in line and "lr=1e-5e" in line


def test_print_config_refuses_the_same_values(capsys):
    assert main(["print-config", TINY, "--cfg-options", "lr=-1"]) == 2
    assert "lr=-1" in _one_error_line(capsys.readouterr().err)


def test_good_nested_keys_and_values_still_work(capsys):
    options = [
        "model.lora.r=8",
        "model.lora.use_rslora=True",  # a LoraConfig field the config does not set yet
        "train_cfg.nonfinite='skip'",
        "param_scheduler=[dict(type='ConstantLR', factor=1.0)]",
        "data_path=my_data.json",  # a path needs no quotes
        "save_total_limit=-1",
        "randomness.diff_rank_seed=True",
    ]
    assert main(["print-config", TINY, "--cfg-options", *options]) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- machine, files, environment


@pytest.mark.skipif(not CPU_ONLY, reason="fp16 trains on a GPU")
def test_fp16_on_the_cpu(capsys, tmp_path):
    line = train_error(capsys, tmp_path, "dtype='fp16'")
    assert "dtype='fp16'" in line and "CPU" in line


@pytest.mark.parametrize("below", ["", "run"])
def test_work_dir_that_is_a_file(below, capsys, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert main(["train", TINY, "--work-dir", str(blocker / below)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--work-dir" in line and str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("name,value", [("NPROC_PER_NODE", "abc"), ("NPROC_PER_NODE", "0"), ("NNODES", "two")])
def test_launcher_settings_that_are_not_counts(name, value, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    line = train_error(capsys, tmp_path)
    assert f"{name}='{value}'" in line


def test_missing_local_model_path_says_no_such_directory(capsys, tmp_path):
    missing = tmp_path / "models" / "nope"
    line = train_error(capsys, tmp_path, f"pretrained_model_name_or_path='{missing}'")
    assert str(missing) in line and "no such directory" in line and "Repo id" not in line


@pytest.mark.parametrize("key", ["data_path", "val_data_path"])
def test_missing_local_dataset_is_named_before_the_model_loads(key, capsys, tmp_path, monkeypatch):
    import xtune.model.finetune as finetune

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing dataset was reported")

    monkeypatch.setattr(finetune.FinetuneModel, "__init__", no_model)
    missing = tmp_path / "data" / "mine.json"
    value = f"identity,{missing}" if key == "data_path" else str(missing)  # one missing item of a mixture
    line = train_error(capsys, tmp_path, f"{key}='{value}'")
    assert f"{key}: dataset '{missing}' not found" in line and not line.endswith("..")


def _malicious_pickle(path: Path, marker: Path) -> None:
    """A torch file whose unpickling would run ``touch MARKER``."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, path)


def test_load_from_a_pickle_with_code_is_refused_and_never_run(capsys, tmp_path):
    evil, marker = tmp_path / "evil.pth", tmp_path / "PWNED"
    _malicious_pickle(evil, marker)
    line = train_error(capsys, tmp_path, f"load_from='{evil}'")
    assert str(evil) in line and "posix.system" in line and "could run code" in line
    assert not marker.exists()


def test_load_from_a_missing_or_foreign_file(capsys, tmp_path):
    line = train_error(capsys, tmp_path, f"load_from='{tmp_path / 'none.pth'}'")
    assert "none.pth" in line and "no such file" in line
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.zeros(2)}, foreign)
    line = train_error(capsys, tmp_path, f"load_from='{foreign}'")
    assert "foreign.pth" in line and "state_dict" in line


def test_resume_a_folder_without_deepspeed(capsys, tmp_path):
    folder = tmp_path / "some_run"
    folder.mkdir()
    line = train_error(capsys, tmp_path, extra=("--resume", str(folder)))
    assert "--resume" in line and str(folder) in line and "iter_*.pth" in line


def _crafted_work_dir(work: Path, finetune_type: str) -> Path:
    """A work dir whose checkpoint says it was trained as ``finetune_type`` (weights do not matter here)."""
    work.mkdir(parents=True)
    checkpoint = work / "iter_4.pth"
    text = f"model = dict(type='SupervisedFinetune', finetune_type='{finetune_type}', lora=dict(r=16))\n"
    torch.save({"state_dict": {"llm.w": torch.zeros(1)}, "meta": {"cfg": text, "iter": 4}}, checkpoint)
    (work / "last_checkpoint").write_text(str(checkpoint))
    return checkpoint


def test_resume_a_lora_work_dir_with_a_full_config(capsys, tmp_path):
    work = tmp_path / "lora_run"
    checkpoint = _crafted_work_dir(work, "lora")
    before = sorted(p.name for p in work.iterdir())
    assert main(["train", FULL, "--work-dir", str(work), "--resume", "auto"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(checkpoint) in line and "finetune_type was 'lora'" in line and "'full'" in line
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written into the run


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    "body,named",
    [
        ("import no_such_module_xyz\n", ["ModuleNotFoundError", "no_such_module_xyz"]),
        ("lr = 1 / 0\n", ["ZeroDivisionError", "line 2"]),
        ("raise RuntimeError('configs may raise')\n", ["RuntimeError", "configs may raise", "line 2"]),
        ("lr = 1e-3 +\n", ["SyntaxError", "line 2"]),
        ("lr = undefined_name\n", ["NameError", "undefined_name"]),
    ],
)
def test_config_file_that_fails(body, named, capsys, tmp_path):
    config = tmp_path / "mine.py"
    config.write_text(f"_base_ = ['{CONFIG_DIR / 'tiny' / (TINY + '.py')}']\n{body}")
    line = train_error(capsys, tmp_path, config=str(config))
    assert str(config) in line
    for text in named:
        assert text in line, line


# ----------------------------------------------------------------------------- data


def _check_dataset(tmp_path: Path, rows: str, *options: str) -> str:
    """``xtune check-dataset`` as a subprocess (mmengine's logger keeps the stream of the first in-process
    command that logs, so data commands run apart)."""
    data = tmp_path / "rows.json"
    data.write_text(rows)
    result = run_xtune("check-dataset", TINY, "--cfg-options", f"data_path='{data}'", "data_format='alpaca'", *options)
    assert result.returncode == 2
    return _one_error_line(result.stderr)


def test_every_row_too_long_gives_the_counts(tmp_path):
    long_prompt = "word " * 200
    rows = "[" + ",".join(f'{{"instruction": "{long_prompt}{i}", "output": "ok"}}' for i in range(3)) + "]"
    line = _check_dataset(tmp_path, rows, "max_length=16")
    assert "rows.json" in line and "3 rows read" in line and "max_length=16" in line and "Raise max_length" in line


def test_null_value_names_the_row_and_column(tmp_path):
    rows = '[{"instruction": "hi", "output": "hello"}, {"instruction": null, "output": "x"}]'
    line = _check_dataset(tmp_path, rows)
    assert "rows.json, row 2" in line and "column 'instruction' is missing or null" in line


# ----------------------------------------------------------------------------- real subprocesses


def run_xtune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xtune", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


SUBPROCESS_CASES = [
    (["--cfg-options", "lr=1e-5e"], {}, ["lr=1e-5e"]),
    (["--cfg-options", "accumulative_counts=0", "model.lora.r=0"], {}, ["accumulative_counts=0", "model.lora.r=0"]),
    ([], {"NPROC_PER_NODE": "abc"}, ["NPROC_PER_NODE='abc'"]),
    (["--cfg-options", "pretrained_model_name_or_path='/no/such/model/dir'"], {}, ["no such directory"]),
]


@pytest.mark.parametrize("args,env,named", SUBPROCESS_CASES)
def test_real_cli_exits_2_with_one_line(args, env, named, tmp_path):
    work = tmp_path / "work"
    result = run_xtune("train", TINY, "--work-dir", str(work), *args, env=env)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr + result.stdout)
    for text in named:
        assert text in line
    assert not work.exists()


def test_real_cli_refuses_a_model_whose_bin_weights_hold_code(tmp_path):
    """transformers would load pytorch_model.bin with weights_only=True and refuse it with a traceback;
    xtune refuses it before the run starts, naming the file, and the code never runs."""
    from xtune.paths import MODEL_DIR

    model, marker = tmp_path / "model", tmp_path / "PWNED"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model / name).write_bytes((MODEL_DIR / "tiny_llama" / name).read_bytes())
    _malicious_pickle(model / "pytorch_model.bin", marker)
    work = tmp_path / "work"
    result = run_xtune(
        "train", TINY, "--work-dir", str(work), "--cfg-options", f"pretrained_model_name_or_path='{model}'"
    )
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "pytorch_model.bin" in line and "posix.system" in line
    assert not marker.exists() and not work.exists()


def test_model_loading_refuses_pickled_code_with_one_line(tmp_path):
    """Commands that load a model folder themselves (chat, merge, the model builder) say the same."""
    from xtune.errors import XtuneError
    from xtune.model.finetune import SupervisedFinetune
    from xtune.paths import MODEL_DIR

    model, marker = tmp_path / "model", tmp_path / "PWNED"
    model.mkdir()
    (model / "config.json").write_bytes((MODEL_DIR / "tiny_llama" / "config.json").read_bytes())
    _malicious_pickle(model / "pytorch_model.bin", marker)
    with pytest.raises(XtuneError, match="posix.system"):
        SupervisedFinetune(str(model), finetune_type="full", dtype="fp32")
    assert not marker.exists()
