"""Plain data parallel (DDP, no DeepSpeed) on 2 CPU ranks trains exactly what one process trains.

2 ranks x batch 1 and 1 process x batch 2 see the same 2 samples per micro-batch (the sampler gives rank
r the samples r, r+2, ...; no shuffling) and the loss is normalised by the step's trained tokens summed
over ranks, so after the same optimizer steps the weights agree to fp32 rounding. Runs are shared
between the tests of this module.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xtune.cli.workers import process_tree
from xtune.engine.runner import load_checkpoint_file
from xtune.testing.training import (
    final_weights,
    max_relative_difference,
    rank_command,
    rank_env,
    sgd_parity_options,
    train,
    train_ranks,
    wait_for_file,
)

pytestmark = pytest.mark.slow

FULL = "tiny_llama_full_identity_e3"
LORA = "tiny_llama_lora_identity_e3"
RANKS = 2


def _options(model, data, batch_size: int, packed: bool, **extra) -> dict:
    return sgd_parity_options(model, data, packed, batch_size, **extra)


class Runs:
    """Training runs made on first use and shared by the tests of this module."""

    def __init__(self, root: Path, model: Path, data: Path) -> None:
        self.root, self.model, self.data = root, model, data
        self.done: set[str] = set()

    def single(self, config: str, packed: bool) -> Path:
        work = self.root / f"single_{config}_{packed}"
        if work.name not in self.done:
            assert train(config, work, _options(self.model, self.data, RANKS, packed)) == 0
            self.done.add(work.name)
        return work

    def ranks(self, config: str, packed: bool) -> Path:
        work = self.root / f"ranks_{config}_{packed}"
        if work.name not in self.done:
            train_ranks(config, work, _options(self.model, self.data, 1, packed), ranks=RANKS)
            self.done.add(work.name)
        return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, alpaca_file) -> Runs:
    return Runs(tmp_path_factory.mktemp("ddp"), tiny_llama, alpaca_file)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("config", [FULL, LORA], ids=["full", "lora"])
def test_two_ranks_equal_one_process_with_twice_the_batch(runs, config, packed):
    ours = final_weights(runs.ranks(config, packed))
    reference = final_weights(runs.single(config, packed))
    assert set(ours) == set(reference)
    assert max_relative_difference(ours, reference) < 1e-5
    initial = load_file(next(runs.model.glob("*.safetensors")))
    if config == LORA:
        assert all("lora_" in key for key in ours)  # frozen base weights are not in the checkpoint
        # LoRA's B matrices start at zero: training moved them, so the comparison means something
        assert max(float(value.abs().max()) for key, value in ours.items() if "lora_B" in key) > 1e-3
    else:
        moved = max(float((ours[key] - initial[key]).abs().max()) for key in initial if key in ours)
        assert moved > 1e-3  # training moved the weights: the comparison means something
    work = runs.ranks(config, packed)
    checkpoint = load_checkpoint_file((work / "last_checkpoint").read_text().strip())
    assert checkpoint["meta"]["iter"] == (6 if packed else 16)  # 2 epochs of 3 or 8 micro-batches per rank
    assert not list(work.glob("*.tmp*"))  # renamed into place once, by rank 0


def test_pth_to_hf_reads_a_ddp_checkpoint(runs):
    from xtune.convert.pth_to_hf import pth_to_hf

    work = runs.ranks(LORA, False)
    saved = pth_to_hf(work / f"{LORA}.py", (work / "last_checkpoint").read_text().strip(), work / "hf")
    adapter = load_file(saved / "adapter_model.safetensors")
    ours = final_weights(work)
    converted = {key.replace(".weight", ".default.weight"): value for key, value in adapter.items()}
    assert set(converted) == set(ours)
    assert all(torch.equal(converted[key], ours[key]) for key in ours)


def test_ddp_leaves_frozen_weights_out_and_needs_no_unused_parameter_search(tiny_llama):
    from xtune.engine.runner import ddp_settings
    from xtune.model.finetune import SupervisedFinetune

    model = SupervisedFinetune(
        pretrained_model_name_or_path=str(tiny_llama), finetune_type="lora", lora={"r": 4, "lora_alpha": 8}
    )
    settings = ddp_settings(model)
    assert settings["device_ids"] is None and settings["find_unused_parameters"] is False
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen and ignored == frozen  # no broadcast and no gradient buckets for the base model


def test_kill_minus_9_then_resume_auto_ends_on_the_same_weights(runs, tmp_path):
    options = _options(runs.model, runs.data, 1, False, max_epochs=4, save_steps=1, save_total_limit=2)
    straight = tmp_path / "straight"
    train_ranks(LORA, straight, options, ranks=RANKS)

    work = tmp_path / "killed"
    command, env = rank_command(LORA, work, options), rank_env(RANKS)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_file(work / "last_checkpoint", process)
    tree = process_tree(process.pid)  # the launcher, torchrun and both workers: kill -9 all, like a lost machine
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    assert len(tree) >= 4
    saved_at = load_checkpoint_file((work / "last_checkpoint").read_text().strip())["meta"]["iter"]
    assert saved_at < 32, "the run finished before it could be killed"

    result = train_ranks(LORA, work, options, ["--resume", "auto"], ranks=RANKS)
    assert f"resuming: skipping the {saved_at} micro-batches already trained" in result.stdout
    assert "stale lock" in result.stderr  # the killed run's lock, detected and replaced
    assert max_relative_difference(final_weights(work), final_weights(straight)) < 1e-6
