"""What a run shows: a short terminal (summary line, first and last iteration), the details in the log file,
TensorBoard beside scalars.json by default and other trackers by one knob, never required."""

import importlib.util
import json
from pathlib import Path

import pytest

from xtune.engine.visualizer import TrackerVisualizer, tracker_backends
from xtune.errors import ConfigError
from xtune.testing.training import train

# 24 identity rows, 8 a batch, unpacked: 3 iterations
SHORT_RUN = {"max_epochs": 1, "log_interval": 100, "evaluation_inputs": [], "save_steps": 10**6, "dtype": "fp32"}
SHORT_RUN |= {"data_path": [{"path": "identity", "max_samples": 24}], "pack_to_max_length": False, "batch_size": 8}


def test_quiet_terminal_full_log_file_and_tensorboard_beside_scalars_json(tmp_path, capfd):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train("tiny_llama_lora_identity_e3", tmp_path, SHORT_RUN) == 0
    terminal = capfd.readouterr()
    shown = terminal.out + terminal.err
    (log_file,) = tmp_path.rglob("*.log")
    log = log_file.read_text()
    for detail in ("System environment:", "Config:", "Hooks will be executed", "first training row", "dataset: {"):
        assert detail not in shown and detail in log, detail
    for noise in ("FileClient", "HardDiskBackend", "is_gradient_checkpointing", "SyncBatchNorm"):
        assert noise not in shown, noise
    summary = [line for line in shown.splitlines() if "parameters trainable; data" in line]
    assert len(summary) == 1 and "(lora)" in summary[0] and "optimizer steps; work dir" in summary[0]
    # log_interval=100 is longer than the run: still the first and the last iteration are logged
    iterations = [line for line in shown.splitlines() if "Iter(train) [" in line]
    assert len(iterations) == 2 and "[1/" in iterations[0].replace(" ", "") and "loss:" in iterations[1]
    (scalars,) = tmp_path.rglob("scalars.json")
    losses = [json.loads(line)["loss"] for line in scalars.read_text().splitlines() if '"loss"' in line]
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in tmp_path.rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    logged = [event.value for event in accumulator.Scalars("loss")]
    assert logged == pytest.approx(losses, rel=1e-5) and len(losses) == 2


def test_progress_bar_replaces_the_iteration_lines(tmp_path, capfd):
    options = {**SHORT_RUN, "default_hooks.logger.progress_bar": True}
    assert train("tiny_llama_lora_identity_e3", tmp_path, options) == 0
    terminal = capfd.readouterr()
    shown = terminal.out + terminal.err
    assert "Iter(train) [" not in shown
    assert "train: 100%" in shown and "3/3" in shown and "loss=" in shown and "lr=" in shown
    (log_file,) = tmp_path.rglob("*.log")
    assert log_file.read_text().count("Iter(train) [") == 2  # the lines still go to the log file


def test_report_to_picks_backends():
    assert tracker_backends("none") == [{"type": "LocalVisBackend"}]
    assert tracker_backends(["tensorboard"])[1] == {"type": "TensorboardVisBackend"}
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        tracker_backends("tensorboard,comet")


@pytest.mark.parametrize("name", ["wandb", "mlflow", "swanlab"])
def test_a_tracker_that_is_not_installed_says_what_to_install(name, tmp_path):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")  # then the backend itself is used
    with pytest.raises(ConfigError, match=f"pip install {name}"):
        TrackerVisualizer(name=f"v_{name}", report_to=name, save_dir=str(Path(tmp_path)))
