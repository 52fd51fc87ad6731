"""Run xtune training in-process from tests, and read what it wrote."""

from pathlib import Path

import torch

from xtune.cli import main
from xtune.engine.runner import load_checkpoint_file

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


def cfg_options(options: dict) -> list[str]:
    """``{"lr": 1e-3}`` -> ``["lr=0.001"]``: values as Python literals, which the CLI parses back."""
    return [f"{key}={value!r}" for key, value in options.items()]


def train(config: str, work_dir: str | Path, options: dict, extra_args: list[str] | None = None) -> int:
    """``xtune train config --work-dir work_dir --cfg-options ...`` in this process; returns the status."""
    argv = ["train", config, "--work-dir", str(work_dir), *(extra_args or [])]
    if options:
        argv += ["--cfg-options", *cfg_options(options)]
    return main(argv)


def last_checkpoint(work_dir: str | Path) -> dict:
    """The checkpoint ``work_dir/last_checkpoint`` names."""
    path = (Path(work_dir) / "last_checkpoint").read_text().strip()
    return load_checkpoint_file(path)


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
