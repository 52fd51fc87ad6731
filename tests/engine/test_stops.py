"""SIGTERM saves and exits with the resume command; a non-finite loss stops the run and names the step."""

import signal
import subprocess
import sys
import time

import pytest

from xtune.testing.training import cfg_options, train

pytestmark = pytest.mark.slow
LORA = "tiny_llama_lora_identity_e3"


def _options(model, data) -> dict:
    return {
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "dtype": "fp32",
        "batch_size": 1,
        "accumulative_counts": 2,
        "max_epochs": 50,
        "save_steps": 10**6,
        "evaluation_inputs": [],
        "max_length": 128,
        "log_interval": 1,
    }


def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tiny_llama, alpaca_file, tmp_path):
    command = [
        sys.executable,
        "-m",
        "xtune",
        "train",
        LORA,
        "--work-dir",
        str(tmp_path),
        "--cfg-options",
        *cfg_options(_options(tiny_llama, alpaca_file)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/vis_data/scalars.json")) and time.time() < deadline:
        time.sleep(0.1)  # wait until training steps are running
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM  # interrupted, not a user error (2)
    assert "interrupted by SIGTERM" in err
    # the hint is the command that was typed, with --resume auto
    assert f"Resume with: xtune train {LORA} --work-dir {tmp_path} --cfg-options" in err and "--resume auto" in err
    saved = (tmp_path / "last_checkpoint").read_text().strip()
    step = int(saved.rsplit("iter_", 1)[1].split(".")[0])
    assert step % 2 == 0 and step < 800  # saved at an optimizer-step boundary, before the end


def test_non_finite_loss_stops_and_names_the_iteration(tiny_llama, alpaca_file, tmp_path, capsys):
    options = {**_options(tiny_llama, alpaca_file), "lr": 1e30, "max_norm": None, "max_epochs": 3, "save_steps": 1}
    assert train(LORA, tmp_path, options) == 2
    err = capsys.readouterr().err
    assert "the loss became" in err and "at iteration" in err and "last good checkpoint" in err


def test_nonfinite_skip_drops_the_step_and_trains_on(tiny_llama, alpaca_file, tmp_path, capsys):
    import torch
    from mmengine.hooks import Hook

    from xtune.registry import HOOKS
    from xtune.testing.training import final_weights

    @HOOKS.register_module(force=True)
    class PoisonOnceHook(Hook):
        """Makes the hidden states of iteration 3 NaN, once."""

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if runner.iter == 2:
                decoder = runner.model.causal_lm().get_decoder()

                def poison(module, args, output):
                    output.last_hidden_state.mul_(float("nan"))  # in place; returning None keeps the output

                self.handle = decoder.register_forward_hook(poison)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if getattr(self, "handle", None):
                self.handle.remove()
                self.handle = None

    options = {
        **_options(tiny_llama, alpaca_file),
        "max_epochs": 1,
        "train_cfg.nonfinite": "skip",
        "custom_hooks": [{"type": "PoisonOnceHook"}, {"type": "RNGStateHook"}],
        "save_steps": 4,
    }
    assert train(LORA, tmp_path, options) == 0
    assert "skipped an optimizer step" in capsys.readouterr().out
    weights = final_weights(tmp_path)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_non_finite_step_is_never_saved_and_last_checkpoint_stays_finite(tiny_llama, alpaca_file, tmp_path, capsys):
    import torch

    from xtune.engine.runner import load_checkpoint_file

    # lr=1e30: the first step leaves huge weights, the next loss is NaN; a save after every step
    options = {**_options(tiny_llama, alpaca_file), "lr": 1e30, "max_norm": None, "max_epochs": 3, "save_steps": 1}
    options.update(accumulative_counts=1, save_total_limit=-1)
    assert train(LORA, tmp_path, options) == 2
    err = capsys.readouterr().err
    saved = sorted(tmp_path.glob("iter_*.pth"))
    assert saved, "the first, finite step should have been saved"
    for path in saved:  # every checkpoint on disk is finite, including the one last_checkpoint names
        state = load_checkpoint_file(str(path))["state_dict"]
        assert all(torch.isfinite(value).all() for value in state.values()), path
    kept = (tmp_path / "last_checkpoint").read_text().strip()
    assert f"the last good checkpoint, {kept}, is kept" in err and "nothing was saved from it" in err


def test_a_non_finite_first_step_says_that_no_checkpoint_exists(tiny_llama, alpaca_file, tmp_path, capsys):
    options = {**_options(tiny_llama, alpaca_file), "lr": 1e30, "max_norm": None, "max_epochs": 3}
    options.update(accumulative_counts=1, save_steps=10**6)
    assert train(LORA, tmp_path, options) == 2
    err = capsys.readouterr().err
    assert "no checkpoint had been saved before: the run must start over" in err
    assert "last good checkpoint" not in err and not (tmp_path / "last_checkpoint").exists()


def test_a_run_whose_every_step_was_skipped_fails(tiny_llama, alpaca_file, tmp_path, capsys):
    import torch
    from mmengine.hooks import Hook

    from xtune.registry import HOOKS

    @HOOKS.register_module(force=True)
    class PoisonAlwaysHook(Hook):
        """Makes every loss NaN."""

        def before_train(self, runner):
            def poison(module, args, output):
                (output if isinstance(output, torch.Tensor) else output.last_hidden_state).mul_(float("nan"))

            runner.model.causal_lm().get_decoder().register_forward_hook(poison)

    options = {
        **_options(tiny_llama, alpaca_file),
        "max_epochs": 1,
        "train_cfg.nonfinite": "skip",
        "custom_hooks": [{"type": "PoisonAlwaysHook"}],
    }
    assert train(LORA, tmp_path, options) == 2
    err = capsys.readouterr().err
    assert "every one of the 8 optimizer steps of this run was skipped" in err and "nothing was trained" in err


# A stand-in for the board: starts a run as the board does, says the run's pid, then waits to be killed.
BOARD = """
import sys, time
from pathlib import Path
from xtune.board.runs import TrainingJob
job = TrainingJob(sys.argv[2:], Path(sys.argv[1]))
job.start()
print(job.process.pid, flush=True)
time.sleep(600)
"""


def test_a_run_whose_board_is_killed_outright_saves_and_stops(tiny_llama, alpaca_file, tmp_path):
    """SIGKILL gives the board no chance to stop its runs: each run notices and stops itself."""
    work = tmp_path / "run"
    args = ["train", LORA, "--work-dir", str(work), "--cfg-options", *cfg_options(_options(tiny_llama, alpaca_file))]
    board = subprocess.Popen([sys.executable, "-c", BOARD, str(work), *args], stdout=subprocess.PIPE, text=True)
    run = int(board.stdout.readline())
    deadline = time.time() + 120
    while not list(work.glob("*/vis_data/scalars.json")) and time.time() < deadline:
        time.sleep(0.1)  # wait until training steps are running
    board.kill()
    board.wait()
    deadline = time.time() + 120
    while _alive(run) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(run), "the run trained on after its board was killed"
    assert "interrupted by SIGTERM" in (work / "board_train.log").read_text()
    saved = (work / "last_checkpoint").read_text().strip()
    assert int(saved.rsplit("iter_", 1)[1].split(".")[0]) < 800  # saved on the way out, before the end


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie whose parent died is reaped by init, so it disappears)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
