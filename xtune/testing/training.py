"""Run xtune training in-process from tests, and read what it wrote."""

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from xtune.checkpoint.files import read_pointer
from xtune.cli import main
from xtune.engine.checkpointing import load_checkpoint_file

# Overrides that make a run exactly reproducible by a plain PyTorch loop: fp32, constant lr, no
# clipping, no weight decay, file order, no checkpoints but the last, no generation at the end.
PARITY_OPTIONS = {
    "dtype": "fp32",
    "param_scheduler": [],
    "max_norm": None,
    "weight_decay": 0.0,
    "train_dataloader.sampler.shuffle": False,
    "save_steps": 10**6,
    "evaluation_inputs": [],
    "log_interval": 1,
}


def sgd_parity_options(model, data, packed: bool, batch_size: int = 2, **extra) -> dict:
    """Options for runs whose final weights are compared across ranks, parallelism and resumes.

    Plain SGD: a weight's change is lr x its gradient, so the comparison measures the gradients. Adam
    divides by sqrt(v): gradient entries that nearly cancel (rounding-level values) become steps of up to
    lr, and two correct runs would differ by lr there. Packed, the 16 alpaca rows of the test data (915
    tokens) make 6 rows of at most 160 tokens.
    """
    return {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "max_length": 160 if packed else 256,
        "pack_to_max_length": packed,
        "batch_size": batch_size,
        "accumulative_counts": 2,
        "max_epochs": 2,
        "optim_wrapper.optimizer": {"_delete_": True, "type": "SGD", "lr": 0.1},
        **extra,
    }


def cfg_options(options: dict) -> list[str]:
    """``{"lr": 1e-3}`` -> ``["lr=0.001"]``: values as Python literals, which the CLI parses back."""
    return [f"{key}={value!r}" for key, value in options.items()]


def train(config: str, work_dir: str | Path, options: dict, extra_args: list[str] | None = None) -> int:
    """``xtune train config --work-dir work_dir --cfg-options ...`` in this process; returns the status."""
    argv = ["train", config, "--work-dir", str(work_dir), *(extra_args or [])]
    if options:
        argv += ["--cfg-options", *cfg_options(options)]
    return main(argv)


def rank_command(config: str, work_dir: str | Path, options: dict, extra_args: list[str] | None = None) -> list[str]:
    """The ``python -m xtune train ...`` command line of :func:`train_ranks`."""
    command = [sys.executable, "-m", "xtune", "train", config, "--work-dir", str(work_dir), *(extra_args or [])]
    return command + (["--cfg-options", *cfg_options(options)] if options else [])


def rank_env(ranks: int) -> dict[str, str]:
    """The environment for ``ranks`` local workers started by xtune's launcher (torchrun, gloo on CPU),
    without the settings of an outer launcher that the test process may have."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(NPROC_PER_NODE=str(ranks), OMP_NUM_THREADS="1")
    return env


def train_ranks(
    config: str,
    work_dir: str | Path,
    options: dict,
    extra_args: list[str] | None = None,
    ranks: int = 2,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``NPROC_PER_NODE=ranks xtune train ...`` in a subprocess; with ``check``, fails unless it exits 0."""
    command = rank_command(config, work_dir, options, extra_args)
    result = subprocess.run(command, env=rank_env(ranks), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command[3:])} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists; fail if ``process`` ends first or the time runs out."""
    start = time.time()
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended (status {process.returncode}) before writing {path}")
        if time.time() - start > timeout:
            process.kill()
            raise AssertionError(f"no {path} after {timeout}s")
        time.sleep(0.02)


def last_checkpoint(work_dir: str | Path) -> dict:
    """The checkpoint ``work_dir/last_checkpoint`` names."""
    return load_checkpoint_file(read_pointer(work_dir) or str(Path(work_dir) / "last_checkpoint"))


def final_weights(work_dir: str | Path, prefix: str = "llm.") -> dict[str, torch.Tensor]:
    """The last checkpoint's weights with the wrapper's prefix removed."""
    state = last_checkpoint(work_dir)["state_dict"]
    return {key[len(prefix) :] if key.startswith(prefix) else key: value for key, value in state.items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the keys both hold (which must be all of ``a``)."""
    missing = [key for key in a if key not in b]
    if missing:
        raise KeyError(f"keys missing from the second state: {missing[:5]}")
    return max(float((a[key].float() - b[key].float()).abs().max()) for key in a)


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest over the keys of ``a`` of max |a - b| / max |b|: each tensor's error relative to its scale."""
    missing = [key for key in a if key not in b]
    if missing:
        raise KeyError(f"keys missing from the second state: {missing[:5]}")
    return max(
        float((a[key].float() - b[key].float()).abs().max()) / max(float(b[key].float().abs().max()), 1e-12)
        for key in a
    )
