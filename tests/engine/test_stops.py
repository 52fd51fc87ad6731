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
    assert process.returncode == 2
    assert "stopped by signal" in err and "--resume auto" in err
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
