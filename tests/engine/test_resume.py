"""Killed runs resume to the same weights; damaged checkpoints are skipped, never loaded."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from xtune.engine.checkpoints import newest_valid_checkpoint
from xtune.engine.runner import load_checkpoint_file
from xtune.errors import CheckpointError
from xtune.testing.training import cfg_options, final_weights, max_difference, train, wait_for_file

pytestmark = pytest.mark.slow

LORA = "tiny_llama_lora_identity_e3"


def _options(model, data) -> dict:
    # Shuffled, with LoRA dropout and a warmup+cosine schedule: resume must restore the sampler position,
    # the RNG (dropout masks), the optimizer and the scheduler to end on the same weights.
    return {
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "dtype": "fp32",
        "batch_size": 2,
        "accumulative_counts": 2,
        "max_epochs": 12,
        "lr": 1e-3,
        "warmup_ratio": 0.1,
        "save_steps": 2,
        "save_total_limit": 2,
        "evaluation_inputs": [],
        "model.lora.lora_dropout": 0.1,
        "max_length": 256,
    }


def test_kill_minus_9_then_resume_auto_ends_on_the_same_weights(tiny_llama, alpaca_file, tmp_path):
    options = _options(tiny_llama, alpaca_file)
    assert train(LORA, tmp_path / "straight", options) == 0
    reference = final_weights(tmp_path / "straight")

    work = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "xtune",
        "train",
        LORA,
        "--work-dir",
        str(work),
        "--cfg-options",
        *cfg_options(options),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_file(work / "last_checkpoint", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved_at = load_checkpoint_file((work / "last_checkpoint").read_text().strip())["meta"]["iter"]
    assert saved_at < 96  # 12 epochs x 8 micro-batches: it was killed part-way

    assert train(LORA, work, options, extra_args=["--resume", "auto"]) == 0
    resumed = final_weights(work)
    assert max_difference(resumed, reference) < 1e-6


def test_resume_auto_without_checkpoints_starts_fresh(tiny_llama, alpaca_file, tmp_path, capsys):
    options = {**_options(tiny_llama, alpaca_file), "max_epochs": 1}
    assert train(LORA, tmp_path, options, extra_args=["--resume", "auto"]) == 0
    assert "starting from scratch" in capsys.readouterr().err
    assert (tmp_path / "last_checkpoint").exists()


def test_a_truncated_newest_checkpoint_is_skipped(tiny_llama, alpaca_file, tmp_path):
    options = {**_options(tiny_llama, alpaca_file), "max_epochs": 2, "save_total_limit": 3}
    assert train(LORA, tmp_path, options) == 0
    newest = (tmp_path / "last_checkpoint").read_text().strip()
    data = open(newest, "rb").read()
    with open(newest, "wb") as handle:
        handle.write(data[: len(data) // 2])  # a crash mid-copy
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint_file(newest)
    found = newest_valid_checkpoint(tmp_path)
    assert found is not None and found != newest
    newest_iter = int(newest.rsplit("iter_", 1)[1].split(".")[0])
    assert load_checkpoint_file(found)["meta"]["iter"] < newest_iter


def test_checkpoints_hold_only_trainable_weights_and_load_without_pickled_code(tiny_llama, alpaca_file, tmp_path):
    options = {**_options(tiny_llama, alpaca_file), "max_epochs": 1}
    assert train(LORA, tmp_path, options) == 0
    path = (tmp_path / "last_checkpoint").read_text().strip()
    checkpoint = torch.load(path, weights_only=True)  # no allow-list needed at all
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])
    assert {"optimizer", "param_schedulers", "message_hub", "rng_state"} <= set(checkpoint)
    assert not list(tmp_path.glob("*.tmp*"))  # no temporary files left behind
    shutil.rmtree(tmp_path)
