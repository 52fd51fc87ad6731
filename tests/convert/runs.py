"""Short real training runs of the tiny demo configs, with the trained model's logits kept for comparison."""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

LORA = "tiny_llama_lora_identity_e3"
FULL = "tiny_llama_full_identity_e3"


@dataclass
class TrainedRun:
    """A finished run: what it wrote and what the model looked like at the end of training."""

    work_dir: Path
    config: Path  # the resolved config `xtune train` wrote into the work dir
    checkpoint: Path
    base: Path
    ids: torch.Tensor
    logits: torch.Tensor  # of the training-time model, in eval mode
    options: dict


def fixed_ids(vocab_size: int = 3000) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


@torch.no_grad()
def base_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    return logits_of(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), ids)


def train_run(config: str, base: Path, work_dir: Path, **extra) -> TrainedRun:
    """Train ``config`` on ``base`` for one short epoch in fp32 and keep the trained model's logits."""
    import xtune.engine  # noqa: F401  (registers the runner, loop and hooks)
    from xtune.cli import build_parser
    from xtune.cli.train import prepare_config
    from xtune.registry import RUNNERS
    from xtune.testing.training import cfg_options

    options = {
        "pretrained_model_name_or_path": str(base),
        "dtype": "fp32",
        "max_epochs": 1,
        "batch_size": 8,
        "lr": 1e-2,
        "evaluation_inputs": [],
        "save_steps": 10**6,
        **extra,
    }
    args = build_parser().parse_args(
        ["train", config, "--work-dir", str(work_dir), "--cfg-options", *cfg_options(options)]
    )
    runner = RUNNERS.build(prepare_config(args))
    runner.train()
    model = runner.model.eval()
    ids = fixed_ids()
    with torch.no_grad():
        logits = model(ids, mode="tensor").float()
    checkpoint = Path((work_dir / "last_checkpoint").read_text().strip())
    return TrainedRun(work_dir, work_dir / f"{config}.py", checkpoint, base, ids, logits, options)
